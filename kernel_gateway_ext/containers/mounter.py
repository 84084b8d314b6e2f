"""Folders bound into running containers, through the mount helper (mountns.py).

The gateway cannot enter a container's mount namespace itself (it has threads; setns refuses
them), so it keeps one small single-threaded helper process, started on first use, and sends it a
line per request; the helper forks a child per request, so a hand-out costs a fork (a few ms), not
an interpreter start (~30 ms). The helper exits when the gateway does (its stdin closes).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence

from ..errors import ContainerFailed
from .spec import BindMount

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mountns.py")
MAX_ANSWER = 4096  # bytes of one answer line


def supported() -> str:
    """'' when folders can be bound into running containers here, else why not."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    if os.geteuid() != 0:
        return "the gateway is not root (entering a container's mount namespace needs CAP_SYS_ADMIN)"
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return "unknown kernel version"
    if (major, minor) < (5, 12):
        return f"Linux {major}.{minor} has no mount_setattr (5.12 or later needed)"
    return ""


class MountHelper:
    """One helper process per event loop, one request at a time (each takes milliseconds)."""

    _instance: MountHelper | None = None

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._seq = 0

    @classmethod
    def instance(cls) -> MountHelper:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    async def _process(self) -> asyncio.subprocess.Process:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new loop (tests make one each): the old pipes are not ours
            self._stop()
            self._loop, self._lock = loop, asyncio.Lock()
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", HELPER, "--serve", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, limit=MAX_ANSWER, env={})
        return self._proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass

    async def attach(self, pid: int, mounts: Sequence[BindMount], timeout: float = 10.0) -> None:
        """Bind `mounts` into the mount namespace of process `pid` (a container's init). Raises
        ContainerFailed with the helper's reason."""
        await self._process()
        assert self._lock is not None
        async with self._lock:
            proc = await self._process()
            assert proc.stdin is not None and proc.stdout is not None
            self._seq += 1
            request = {"id": self._seq, "pid": pid, "mounts": [
                {"source": m.source, "target": m.target, "read_only": m.read_only} for m in mounts]}
            try:
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                await proc.stdin.drain()
                line = await asyncio.wait_for(proc.stdout.readline(), timeout)
                answer = json.loads(line) if line else {"error": "the mount helper ended"}
            except (OSError, ValueError, asyncio.TimeoutError, asyncio.LimitOverrunError) as e:
                self._stop()
                raise ContainerFailed(f"folders could not be mounted: {type(e).__name__}") from e
            except BaseException:
                self._stop()  # cancelled mid-request: its answer would be read as the next one's
                raise
            if not line or answer.get("id") != self._seq:
                self._stop()
            if not answer.get("ok"):
                raise ContainerFailed(f"folders could not be mounted: {answer.get('error') or 'unknown error'}")
