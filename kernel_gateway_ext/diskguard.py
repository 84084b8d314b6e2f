"""A kernel or session may fill the host's disk only up to its share: past `limit` bytes of its own
files (its writable layer, volumes and socket folder: containers/diskuse.py), or `max_files`
entries, it is stopped and its container removed with its files, as an out-of-memory one is
stopped by the kernel. Without it one hostile kernel fills the disk the engine, the store and
every other kernel live on.

No event says a file grew, and the engine bounds a writable layer only on xfs with project
quotas, so the guard counts: every `check_seconds`, off the event loop, each walk stopping once
past the bound. What a container can write between two counts is the overshoot (at 500 MB/s and
10 s, 5 GB): lower `check_seconds` on hosts with fast disks.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from traitlets import Float, Int, Unicode

from .config import EnvConfigurable, env
from .containers.backend import ContainerBackend
from .containers.limits import parse_memory
from .errors import ContainerMissing, EngineError, EngineUnavailable, KernelNotFound
from .jobs import JobManager
from .jobs.records import JobRecord
from .kernels.manager import GatewayKernelManager


@dataclass(frozen=True)
class DiskTarget:
    container_id: str
    what: str  # "kernel ID of OWNER", for the log
    stop: Callable[[str], Awaitable[None]]  # called with the reason


class DiskGuard(EnvConfigurable):
    """Counts what each container of this gateway wrote; stops those past the bound."""

    limit = env(
        Unicode("10g", help="Most disk a kernel or session container may fill with its own files (its writable "
                            "layer, volumes and socket folder; mounted folders have their own quotas): past it, it "
                            "is stopped and removed with its files. '512m', '10g'; 0: no bound."),
        "KGE_DISK_LIMIT",
    )
    max_files = env(
        Int(1_000_000, help="Most files and folders a container may make (each an inode of the host's disk, and "
                            "time for the count). 0: no bound."),
        "KGE_DISK_MAX_FILES",
    )
    check_seconds = env(
        Float(10.0, help="Seconds between two counts of what containers wrote (what one writes in between is "
                         "the overshoot past the bound)."),
        "KGE_DISK_CHECK_SECONDS",
    )

    def __init__(self, targets: Callable[[], list[DiskTarget]], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.targets = targets
        self.limit_bytes = parse_memory(self.limit) if self.limit.strip() not in ("", "0") else 0
        self.stopped = 0  # containers stopped for their disk, since the start
        self._backend: ContainerBackend | None = None
        self._task: asyncio.Future[None] | None = None

    async def start(self, backend: ContainerBackend) -> list[str]:
        """Start counting; warnings when it cannot (nothing then bounds a container's disk)."""
        if not (self.limit_bytes or self.max_files) or self.check_seconds <= 0:
            return []
        why = await backend.disk_unmeasured()
        if why:
            return [f"what kernels write to the host's disk is not bounded: {why}"]
        self._backend = backend
        self._task = asyncio.ensure_future(self._run())
        return []

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the next count tries again; say why this one failed
                self.log.exception("counting the containers' disk use failed")

    async def check(self) -> list[str]:
        """Count every target once; stop those past a bound. The containers stopped."""
        backend = self._backend
        if backend is None:
            return []
        stopped = []
        for target in self.targets():
            try:
                used, entries = await backend.disk_use(target.container_id, self.limit_bytes, self.max_files)
            except (ContainerMissing, EngineError, EngineUnavailable):
                continue  # gone meanwhile, or the engine away: the next count sees
            over_bytes = self.limit_bytes and used > self.limit_bytes
            if not over_bytes and not (self.max_files and entries > self.max_files):
                continue
            reason = (f"its files passed the disk limit ({self.limit})" if over_bytes
                      else f"it made more than {self.max_files} files")
            self.log.warning("Stopping %s: %s", target.what, reason)
            self.stopped += 1
            stopped.append(target.container_id)
            await target.stop(reason)
        return stopped


def gateway_targets(kernels: GatewayKernelManager, jobs: JobManager) -> Callable[[], list[DiskTarget]]:
    """This replica's running kernels and sessions (a pooled kernel has run nothing of anyone's)."""

    def kernel_stop(kernel_id: str, kernelspec: str) -> Callable[[str], Awaitable[None]]:
        async def stop(reason: str) -> None:
            kernels.count_event("cull", kernelspec, "disk")
            try:
                await kernels.shutdown(kernel_id, now=True)
            except KernelNotFound:  # shut down meanwhile
                pass
        return stop

    def job_stop(rec: JobRecord) -> Callable[[str], Awaitable[None]]:
        async def stop(reason: str) -> None:
            if jobs.find(rec.id) is rec:  # not deleted meanwhile
                await jobs.delete(rec, reason=f"stopped: {reason}")
        return stop

    def targets() -> list[DiskTarget]:
        out = []
        for km in kernels.list():
            prov = km.docker
            if prov is not None and prov.container_id:
                out.append(DiskTarget(prov.container_id, f"kernel {km.kernel_id} ({km.kernel_name}) of {km.owner}",
                                      kernel_stop(km.kernel_id, km.kernel_name)))
        for rec in jobs.list(status="Running"):
            if rec.container_id:
                out.append(DiskTarget(rec.container_id, f"session {rec.id} of {rec.owner}", job_stop(rec)))
        return out
    return targets

