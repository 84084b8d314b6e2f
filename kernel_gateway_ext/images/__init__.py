"""Kernel images: how they are built (docker/ in the source tree) and found."""
