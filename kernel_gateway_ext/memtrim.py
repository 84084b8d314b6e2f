"""Give freed memory back to the system after kernels come and go.

A start or a stop allocates and frees many short-lived buffers (Docker API responses, ZMQ
sockets and messages, websocket sessions), in the main heap and in the heaps glibc gives each
Docker thread. glibc keeps what was freed inside its heaps for reuse, so a gateway's resident
memory tracks its busiest moment, not what it holds. `malloc_trim(0)` returns the free pages of
every heap. It runs off the loop once things are quiet: `delay` seconds after the last change (or
at the latest `MAX_WAIT` delays after the first, under steady churn), never on a clock (an idle
gateway does nothing), and not in the middle of a burst (it holds each heap's lock while it runs)."""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from typing import Any, Callable

MAX_WAIT = 6  # delays after the first change of a quiet period that never comes


def _libc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


class MemoryTrim:
    """`soon()` after a change; the trim follows once for all changes since (see the module)."""

    def __init__(self, delay: float, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.delay = delay
        self.log = log
        self._trim = _libc_trim() if delay > 0 else None
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Future[Any] | None = None
        self._first = self._last = 0.0  # monotonic times of the pending period's first and last change
        self.count = 0  # trims done

    @property
    def enabled(self) -> bool:
        return self._trim is not None

    def soon(self) -> None:
        if self._trim is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a change outside the server's loop (a command, a test's set-up)
            return
        self._last = time.monotonic()
        if self._timer is None:
            self._first = self._last
            self._timer = loop.call_later(self.delay, self._fire)

    def _fire(self) -> None:
        now, loop = time.monotonic(), asyncio.get_running_loop()
        due = min(self._last + self.delay, self._first + MAX_WAIT * self.delay)
        if now < due:  # still changing: wait for quiet (or the latest time)
            self._timer = loop.call_later(due - now, self._fire)
            return
        if self._running is not None and not self._running.done():  # one at a time: again after it
            self._first = now
            self._timer = loop.call_later(self.delay, self._fire)
            return
        self._timer = None
        self._running = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        trim = self._trim
        assert trim is not None
        began = time.monotonic()
        try:
            await asyncio.to_thread(trim, 0)
        except Exception as e:  # noqa: BLE001 - memory stays as it was; nothing else depends on it
            self.log.warning("malloc_trim failed: %s", e)
            return
        self.count += 1
        self.log.debug("Memory trimmed in %.1f ms", (time.monotonic() - began) * 1000)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
