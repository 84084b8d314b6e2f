"""Kernel provisioners: how a kernel process comes to life (a Docker container, or locally)."""
