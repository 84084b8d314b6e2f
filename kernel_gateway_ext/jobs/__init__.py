"""Headless jobs (Skaha sessions): one container per session, with status, logs, events, expiry."""
from .manager import JobManager

__all__ = ["JobManager"]
