"""Headless jobs (Skaha sessions): one container per session, with status, logs, events, expiry."""
from .manager import SessionManager

__all__ = ["SessionManager"]
