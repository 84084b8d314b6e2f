"""Who listens to which container's events: callbacks per id (a container's, or a cluster
service's), each called on the loop it subscribed from, while events are read in a thread."""
from __future__ import annotations

import asyncio
import threading
from typing import Any

from .backend import EventCallback


class Subscribers:
    def __init__(self) -> None:
        self._by_id: dict[str, list[tuple[asyncio.AbstractEventLoop, EventCallback]]] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._by_id

    def add(self, key: str, callback: EventCallback) -> None:
        """Call `callback(event)` on the current loop for each event delivered for `key`."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._by_id.setdefault(key, []).append((loop, callback))

    def remove(self, key: str, callback: EventCallback | None = None) -> bool:
        """Forget `callback` (every callback of `key` when None); True when `key` has none left."""
        with self._lock:
            subs = self._by_id.get(key, [])
            subs[:] = [s for s in subs if callback is not None and s[1] is not callback]
            if subs:
                return False
            self._by_id.pop(key, None)
            return True

    def deliver(self, key: str, event: dict[str, Any]) -> None:
        """From any thread: hand `event` to each of `key`'s callbacks on its loop."""
        with self._lock:
            subs = list(self._by_id.get(key, []))
        for loop, cb in subs:
            if not loop.is_closed():
                loop.call_soon_threadsafe(cb, event)
