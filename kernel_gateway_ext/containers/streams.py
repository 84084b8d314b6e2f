"""What a running container gives back as it goes: its log (LogStream) and a terminal (Tty)."""
from __future__ import annotations

import asyncio
import socket
from typing import Any

from ..errors import ContainerMissing
from .engine import DockerEngine


class LogStream:
    """A container's log as it comes, read in a thread of the engine's long pool into a bounded
    queue (a reader too slow for the container loses the excess, and is told how much).
    `close()` ends it; so does the container's end."""

    LIMIT = 256  # chunks waiting for the reader

    def __init__(self, engine: DockerEngine, raw: Any) -> None:
        self.raw = raw
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(self.LIMIT)
        self.dropped = 0
        self.ended = asyncio.Event()
        loop = asyncio.get_running_loop()

        def put(chunk: bytes) -> None:
            try:
                self.queue.put_nowait(chunk)
            except asyncio.QueueFull:
                self.dropped += len(chunk)

        def pump() -> None:
            try:
                for chunk in raw:
                    loop.call_soon_threadsafe(put, bytes(chunk))
            except Exception:  # noqa: BLE001 - closed by us, or the engine went away: the end either way
                pass
            finally:
                loop.call_soon_threadsafe(self.ended.set)

        self.reading = asyncio.ensure_future(engine.run_long(pump))

    async def next(self) -> bytes | None:
        """The next chunk (several joined when they wait), or None at the end."""
        if self.queue.empty():
            getting = asyncio.ensure_future(self.queue.get())
            ending = asyncio.ensure_future(self.ended.wait())
            await asyncio.wait((getting, ending), return_when=asyncio.FIRST_COMPLETED)
            ending.cancel()
            if not getting.done():
                getting.cancel()
                return None
            chunks = [getting.result()]
        else:
            chunks = []
        while not self.queue.empty():
            chunks.append(self.queue.get_nowait())
        return b"".join(chunks)

    def close(self) -> None:
        try:
            self.raw.close()
        except Exception:  # noqa: BLE001 - already closed
            pass


class Tty:
    """An interactive process with a terminal in a container: a non-blocking socket to read and
    write (the loop watches it; no thread waits on it), resized through the engine."""

    def __init__(self, engine: DockerEngine, exec_id: str, holder: Any) -> None:
        self.engine = engine
        self.exec_id = exec_id
        self._holder = holder
        # docker-py answers a socket wrapper; the raw socket is what the loop can watch.
        self.sock: socket.socket = getattr(holder, "_sock", holder)
        self.sock.setblocking(False)

    async def resize(self, rows: int, cols: int) -> None:
        await self.engine.api("exec_resize", self.exec_id, height=rows, width=cols)

    async def ended(self) -> bool:
        """Whether its process has run and exited. False while it runs, and also before it has
        started: the engine answers the exec's socket before it starts the process."""
        try:
            info = await self.engine.api("exec_inspect", self.exec_id)
        except ContainerMissing:
            return True  # the container is gone, and the exec with it
        return not info.get("Running") and info.get("ExitCode") is not None

    def close(self) -> None:
        for part in (self.sock, self._holder):
            try:
                part.close()
            except OSError:
                pass
