"""Deadlines: the one mechanism that gives resources back.

Idle kernels (every dialect: the Jupyter API's cull_* options, v2's idleTimeout) and Skaha
sessions (expiryTime) each get one timer at their deadline. Nothing polls: when a timer fires
its owner decides whether the thing is still due (activity may have moved the deadline) and
either acts or arms the timer again.
"""
from __future__ import annotations

import time
from typing import Any, Protocol

from traitlets import Bool, Float, HasTraits

from ..config import env
from ..tasks import Deadlines
from .kernel import GatewayKernel


class CullingSettings(HasTraits):
    """The culling options (traits of the kernel store: GatewayKernelManager.cull_idle_timeout, …)."""

    cull_idle_timeout = env(
        Float(86400.0, help="Shut kernels down after this many seconds without activity (0: never), as "
                            "jupyter_server's MappingKernelManager.cull_idle_timeout. By default a kernel idle "
                            "for a day with no websocket open goes (see cull_busy, cull_connected)."),
        "KGE_CULL_IDLE_TIMEOUT",
    )
    cull_busy = env(Bool(False, help="Cull busy kernels too (an execution that runs longer than the timeout)."),
                    "KGE_CULL_BUSY")
    cull_connected = env(Bool(False, help="Cull kernels that still have an open websocket."), "KGE_CULL_CONNECTED")


class CullHost(Protocol):
    """What the culler needs of the kernel store."""

    log: Any
    cull_idle_timeout: float
    cull_busy: bool
    cull_connected: bool

    @property
    def closing(self) -> bool: ...

    def find(self, kernel_id: str) -> GatewayKernel | None: ...

    def count_event(self, event: str, kernelspec: str, source: str = "", seconds: float = 0.0) -> None: ...

    async def shutdown(self, kernel_id: str, now: bool = False) -> None: ...


class Culler:
    """Idle kernels are shut down at their deadline (one timer each, in `deadlines`)."""

    def __init__(self, host: CullHost, deadlines: Deadlines) -> None:
        self.host = host
        self.deadlines = deadlines

    def idle_timeout_of(self, km: GatewayKernel) -> float:
        """The caller's own timeout (v2 idleTimeout), never longer than the server's."""
        server = self.host.cull_idle_timeout
        if km.idle_timeout:
            return min(km.idle_timeout, server) if server > 0 else km.idle_timeout
        return server

    def arm(self, km: GatewayKernel, at: float | None = None) -> None:
        """(Re)arm the kernel's idle deadline: last activity + its timeout."""
        timeout = self.idle_timeout_of(km)
        if timeout <= 0 or self.host.closing:
            self.deadlines.cancel(km.kernel_id)
            return
        when = at if at is not None else km.last_activity.timestamp() + timeout
        self.deadlines.arm(km.kernel_id, when, lambda: self._cull_if_idle(km.kernel_id))

    async def _cull_if_idle(self, kernel_id: str) -> None:
        host = self.host
        km = host.find(kernel_id)
        if km is None:
            return
        timeout = self.idle_timeout_of(km)
        if timeout <= 0:
            return
        now = time.time()
        idle_for = now - km.last_activity.timestamp()
        if idle_for < timeout:
            self.arm(km)  # there was activity since: the deadline moved
            return
        if km.execution_state == "busy" and not host.cull_busy:
            self.arm(km, at=now + timeout)
            return
        if km.connections and not host.cull_connected:
            self.arm(km, at=now + timeout)
            return
        host.log.warning("Culling kernel %s (%s) of %s: idle for %.0f s (timeout %.0f s)",
                         km.kernel_id, km.kernel_name, km.owner, idle_for, timeout)
        host.count_event("cull", km.kernel_name, "idle")
        await host.shutdown(kernel_id, now=True)
