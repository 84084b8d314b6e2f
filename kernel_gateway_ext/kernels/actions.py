"""Actions on a kernel in the store: restart in place, interrupt, shut down (one, or all at exit).

`KernelActions` is a mixin of the kernel store (GatewayKernelManager): these act on the store's own
kernels, records and collaborators, which `ActionsHost` names. Restart and shutdown of one kernel
never overlap: both hold its lifecycle lock.
"""
from __future__ import annotations

import asyncio
from typing import Any, Protocol

from ..errors import GatewayError, KernelDead, KernelStartFailed
from ..tasks import Deadlines
from .adoption import KernelRecords
from .kernel import GatewayKernel
from .liveness import Liveness
from .pool import WarmPool
from .probes import process_exit_watch, wait_ready


class ActionsHost(Protocol):
    """What the actions need of the kernel store."""

    log: Any
    ready_timeout: float
    liveness: Liveness
    records: KernelRecords
    deadlines: Deadlines
    pool: WarmPool
    _kernels: dict[str, Any]
    _starting: dict[str, GatewayKernel]
    _closing: bool

    def get(self, kernel_id: str) -> GatewayKernel: ...

    def list(self) -> list[GatewayKernel]: ...  # noqa: A003 - jupyter_client's naming

    def watch(self, km: GatewayKernel) -> None: ...

    def _removed(self, kernel_id: str) -> None: ...

    async def restart_in_place(self, km: GatewayKernel) -> GatewayKernel: ...


class KernelActions:
    """Restart, interrupt and shutdown, for every dialect."""

    async def restart(self: ActionsHost, kernel_id: str) -> GatewayKernel:
        """Restart in place: same id, address and key; open connections keep working."""
        km = self.get(kernel_id)
        if km.restarting or km.stopping or km.lifecycle.locked():
            raise KernelDead("kernel is already restarting or shutting down", status=409)
        async with km.lifecycle:
            return await self.restart_in_place(km)

    async def restart_in_place(self: ActionsHost, km: GatewayKernel) -> GatewayKernel:
        """The restart itself; the caller holds the kernel's lifecycle lock."""
        km.restarting = True
        km.execution_state = "restarting"
        km.notify("restarting")
        before = km.get_connection_info()
        old_gone = await process_exit_watch(km)
        try:
            await km.restart_kernel(now=False)
            await old_gone  # the old kernel process let go of its sockets: no stale reply possible
            if km.iopub is not None:
                km.iopub.replaced()  # its subscription rejoins the new process: readers wait for that
            if km.get_connection_info()["ip"] != before["ip"]:
                km.generation += 1
                self.watch(km)
                km.notify("moved")
            await wait_ready(km, self.ready_timeout)
        except BaseException as e:
            km.execution_state = "dead"
            km.reason = f"restart failed: {e}"
            km.notify("dead", reason=km.reason)
            if isinstance(e, GatewayError):
                raise
            raise KernelStartFailed(f"restart failed: {e}") from e
        finally:
            km.restarting = False
        km.execution_state = "idle"
        km.reason = ""
        km.restart_count += 1
        if km._runner is not None:
            km._runner.reset()
        km.touch()
        await km.notify_and_wait("restarted")
        self.records.put_later(km)
        return km

    async def interrupt(self: ActionsHost, kernel_id: str) -> None:
        km = self.get(kernel_id)
        if km.execution_state == "dead":
            raise KernelDead("kernel is dead; restart it first")
        if km.restarting or km.stopping:
            # A signal now would reach a kernel process before it can handle it.
            raise KernelDead("kernel is restarting or shutting down", status=409)
        await km.interrupt_kernel()

    async def shutdown(self: ActionsHost, kernel_id: str, now: bool = False) -> None:
        """Stop a kernel. Concurrent calls for the same kernel wait for the first one."""
        km = self.get(kernel_id)
        km.stopping = True
        async with km.lifecycle:  # waits for a restart in flight, or for another shutdown
            if self._kernels.get(kernel_id) is not km:
                return  # another caller finished it
            self.liveness.unwatch(km)
            km.notify("shutdown")
            if km._runner is not None:
                km._runner.close()
            try:
                await km.shutdown_kernel(now=now or km.execution_state == "dead")
            finally:
                self._removed(kernel_id)
                self.log.info("Kernel shut down: %s", kernel_id)

    async def shutdown_everything(self: ActionsHost, keep: bool = False) -> None:
        """Gateway exit. Pooled and starting kernels always go; the others stop too unless
        `keep`, when their containers and records stay for the next process to adopt."""
        self._closing = True
        await self.deadlines.close()
        await self.liveness.wait()
        # Refills in flight are creating containers: let them land, then remove them too.
        kms = await self.pool.drain()
        kms += list(self._starting.values())
        if keep:
            for km in self.list():
                self.liveness.unwatch(km)
                if km._runner is not None:
                    km._runner.close()
                if not km.persisted:
                    kms.append(km)  # a local process cannot be adopted: stop it
        else:
            kms += self.list()
        for km in kms:
            self.liveness.unwatch(km)
        results = await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kms), return_exceptions=True)
        for km, res in zip(kms, results):
            if isinstance(res, BaseException):
                self.log.warning("Kernel %s did not shut down cleanly: %s", km.kernel_id, res)
            self._removed(km.kernel_id)
        await self.records.flush()
