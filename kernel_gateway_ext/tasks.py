"""Background tasks that must not be lost (asyncio keeps only weak references to tasks, and a
gateway that stops must wait for the ones still creating or removing containers and records), and
deadlines that start them (culling, expiry): timers, never polling."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def gather_all(*aws: Awaitable[Any]) -> list[Any]:
    """Run `aws` at once and let every one finish, then raise the first failure (none is left
    running behind the caller's clean-up, as plain gather's first error would leave them)."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        raise failed
    return results


class TaskSet:
    """Holds background tasks until they finish; failures are logged, never silently dropped."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter[Any] | None = None, what: str = "task") -> None:
        self.log = log
        self.what = what
        self._tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, aw: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self.log is not None:
            self.log.warning("A background %s failed: %s", self.what, task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self) -> None:
        """Wait until no task is left (including tasks started meanwhile)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class Deadlines:
    """One timer per key, re-armed when the deadline moves."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks = TaskSet(log, "deadline action")

    def arm(self, key: str, when: float, action: Callable[[], Awaitable[Any]]) -> None:
        """Run `action()` at epoch time `when` (replacing the key's earlier deadline)."""
        self.cancel(key)
        delay = max(0.0, when - time.time())
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key, action)

    def _fire(self, key: str, action: Callable[[], Awaitable[Any]]) -> None:
        self._timers.pop(key, None)
        self._tasks.spawn(action())

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
        await self._tasks.wait()
