"""Folders bound into running containers, through the mount helper (mountns.py).

The gateway cannot enter a container's mount namespace itself (it has threads; setns refuses
them), so it keeps one small single-threaded helper process, started with the first pool, and sends
it a line per request from a worker thread; the helper forks a child per request, so a hand-out
costs a fork (a few ms), not an interpreter start (~30 ms). The helper exits when the gateway does
(its stdin closes).
"""
from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

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
    """One helper process for the gateway process, one request at a time (each takes milliseconds),
    spoken to from a worker thread: no event loop owns its pipes, so it outlives a loop (tests run
    several) and never blocks one."""

    _instance: MountHelper | None = None

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._seq = 0

    @classmethod
    def instance(cls) -> MountHelper:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    async def start(self) -> None:
        """Start the helper now, so that the first hand-out does not wait for it."""
        await asyncio.to_thread(self._locked_process)

    def _locked_process(self) -> None:
        with self._lock:
            self._process()

    def _process(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-I", "-S", HELPER, "--serve"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={}, close_fds=True)
        return self._proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()

    def _request(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        with self._lock:
            proc = self._process()
            assert proc.stdin is not None and proc.stdout is not None
            self._seq += 1
            request["id"] = self._seq
            try:
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
                if not select.select([proc.stdout], [], [], timeout)[0]:
                    raise TimeoutError("the mount helper did not answer")
                line = proc.stdout.readline(MAX_ANSWER)
                answer = json.loads(line) if line else {"error": "the mount helper ended"}
            except (OSError, ValueError) as e:
                self._stop()
                raise ContainerFailed(f"folders could not be mounted: {type(e).__name__}") from e
            if not line or answer.get("id") != self._seq:
                self._stop()  # out of step: a fresh helper for the next request
            return dict(answer)

    async def attach(self, pid: int, mounts: Sequence[BindMount], timeout: float = 10.0) -> None:
        """Bind `mounts` into the mount namespace of process `pid` (a container's init). Raises
        ContainerFailed with the helper's reason."""
        request = {"pid": pid, "mounts": [{"source": m.source, "target": m.target, "read_only": m.read_only}
                                          for m in mounts]}
        answer = await asyncio.to_thread(self._request, request, timeout)
        if not answer.get("ok"):
            raise ContainerFailed(f"folders could not be mounted: {answer.get('error') or 'unknown error'}")
