"""Persistent state (SQLite by default): key pairs, folders; more as the gateway grows."""
from .db import Store

__all__ = ["Store"]
