"""Activity and death: each kernel's iopub is watched for busy/idle (iopub.py), its container for exit.

A kernel whose container dies (killed, out of memory, crashed) is restarted in place, as
jupyter_server's KernelRestarter does for local kernels: same kernel id, and open websockets are
told `restarting` once the new kernel answers (JupyterLab then shows "the kernel appears to have
died. It will restart automatically" and reconnects). A kernel that keeps dying, a REST (v2)
kernel whose client expects to see the death, or any kernel when autorestart is off, is
reported `dead` with the reason; a restart request revives it.

`Liveness` is a collaborator of the kernel store: it reaches the store only through `LivenessHost`.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, Protocol

from traitlets import Bool, Float, HasTraits, Int

from ..config import env
from ..tasks import TaskSet
from .iopub import hub_of
from .kernel import GatewayKernel


class LivenessSettings(HasTraits):
    """The automatic-restart options (traits of the kernel store: GatewayKernelManager.autorestart, …)."""

    autorestart = env(
        Bool(True, help="Restart a kernel whose container died, in place (same id), as jupyter_server does; "
                        "REST (v2) kernels are reported dead instead. Off: every death is reported."),
        "KGE_AUTORESTART",
    )
    autorestart_limit = env(
        Int(3, help="Automatic restarts of one kernel within autorestart_window; past it the kernel stays dead."),
        "KGE_AUTORESTART_LIMIT",
    )
    autorestart_window = env(
        Float(300.0, help="Seconds over which autorestart_limit counts."), "KGE_AUTORESTART_WINDOW"
    )
    output_release_after = env(
        Float(120.0, help="Let an idle kernel's output subscription go after this many seconds with no reader "
                          "(websocket session, REST run) and no output: ~30 KiB and two file descriptors per idle "
                          "kernel (a REST caller's own shell and stdin connections go after as long unused). A reader "
                          "subscribes again. Output a kernel prints unasked after that, with nobody connected, no "
                          "longer counts as activity for culling. 0: never."),
        "KGE_OUTPUT_RELEASE_AFTER",
    )


class LivenessHost(Protocol):
    """What liveness needs of the kernel store."""

    log: Any
    autorestart: bool
    autorestart_limit: int
    autorestart_window: float
    output_release_after: float

    @property
    def closing(self) -> bool: ...

    def find(self, kernel_id: str) -> GatewayKernel | None: ...

    def restart_in_place(self, km: GatewayKernel) -> Awaitable[GatewayKernel]: ...  # the lifecycle lock held

    def output_released(self) -> None: ...


class Liveness:
    def __init__(self, host: LivenessHost) -> None:
        self.host = host
        self._autorestarts = TaskSet(host.log, "automatic restart")

    async def wait(self) -> None:
        """Wait for automatic restarts in flight (gateway exit)."""
        await self._autorestarts.wait()

    def watch(self, km: GatewayKernel) -> None:
        """Follow the kernel's iopub for busy/idle (its one subscription, kept if it has one: a
        pooled kernel's is live already) and its container for exit."""
        km.output_release_after = self.host.output_release_after
        km.on_output_released = self.host.output_released
        hub = hub_of(km)
        if not hub.subscribers:
            hub.release_when_unread()  # a kernel nobody connects to
        prov = km.docker
        if prov is not None:
            prov.exit_callback = lambda code: self._on_container_exit(km, code)

    def unwatch(self, km: GatewayKernel) -> None:
        if km.iopub is not None:
            km.iopub.close()
            km.iopub = None

    def _on_container_exit(self, km: GatewayKernel, code: int | None) -> None:
        if km.shutting_down or km.restarting or km.stopping or self.host.find(km.kernel_id) is not km:
            return
        prov = km.docker
        km.execution_state = "dead"
        if prov is not None and prov.oom_killed:
            km.reason = "killed: out of memory"
        else:
            km.reason = (prov.exit_reason if prov is not None else "") or f"exited with code {code}"
        log = self.host.log
        if self._may_autorestart(km):
            log.warning("Kernel %s died (%s): restarting it", km.kernel_id, km.reason)
            self._autorestarts.spawn(self._autorestart(km))
            return
        log.warning("Kernel %s died: %s", km.kernel_id, km.reason)
        km.notify("dead", reason=km.reason)

    def _may_autorestart(self, km: GatewayKernel) -> bool:
        host = self.host
        if not host.autorestart or km.client_token is not None or host.closing:
            return False
        now = time.monotonic()
        km.autorestarts = [t for t in km.autorestarts if now - t < host.autorestart_window]
        if len(km.autorestarts) >= host.autorestart_limit:
            host.log.warning("Kernel %s died %s times within %ss: left dead", km.kernel_id,
                             len(km.autorestarts) + 1, host.autorestart_window)
            return False
        km.autorestarts.append(now)
        return True

    async def _autorestart(self, km: GatewayKernel) -> None:
        if km.lifecycle.locked():  # a requested restart or a shutdown is already on it
            return
        async with km.lifecycle:
            if self.host.find(km.kernel_id) is not km or km.stopping:
                return
            try:
                await self.host.restart_in_place(km)
            except Exception as e:  # noqa: BLE001 - the restart reported it dead, with the reason
                self.host.log.warning("Kernel %s: automatic restart failed: %s", km.kernel_id, e)
                return
        km.notify("autorestarted")
