"""Deadlines: the one mechanism that gives resources back.

Idle kernels (every dialect: the Jupyter API's cull_* options, v2's idleTimeout) and Skaha
sessions (expiryTime) each get one timer at their deadline. Nothing polls: when a timer fires
its owner decides whether the thing is still due (activity may have moved the deadline) and
either acts or arms the timer again.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


class Deadlines:
    """One timer per key, re-armed when the deadline moves."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def arm(self, key: str, when: float, action: Callable[[], Awaitable[Any]]) -> None:
        """Run `action()` at epoch time `when` (replacing the key's earlier deadline)."""
        self.cancel(key)
        delay = max(0.0, when - time.time())
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key, action)

    def _fire(self, key: str, action: Callable[[], Awaitable[Any]]) -> None:
        self._timers.pop(key, None)
        task = asyncio.ensure_future(action())
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.warning("A deadline action failed: %s", task.exception())

    def cancel(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def armed(self, key: str) -> bool:
        return key in self._timers

    async def close(self) -> None:
        """Cancel every timer and wait for actions in flight."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
