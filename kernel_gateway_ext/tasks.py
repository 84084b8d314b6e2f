"""Background tasks that must not be lost: asyncio keeps only weak references to tasks, and a
gateway that stops must wait for the ones still creating or removing containers and records."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any


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
