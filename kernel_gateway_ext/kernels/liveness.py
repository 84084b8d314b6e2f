"""Activity and death: each kernel's iopub is watched for busy/idle, its container for exit.

A kernel whose container dies (killed, out of memory, crashed) is restarted in place, as
jupyter_server's KernelRestarter does for local kernels: same kernel id, and open websockets are
told `restarting` once the new kernel answers (JupyterLab then shows "the kernel appears to have
died. It will restart automatically" and reconnects). A kernel that keeps dying, a REST (v2)
kernel whose client expects to see the death, or any kernel when autorestart is off, is
reported `dead` with the reason; a restart request revives it.

`Liveness` is a collaborator of the kernel store: it reaches the store only through `LivenessHost`.
"""
from __future__ import annotations

import json
import time
from hmac import compare_digest
from collections.abc import Awaitable
from typing import Any, Protocol

from jupyter_client.session import DELIM, Session
from traitlets import Bool, Float, HasTraits, Int

from ..config import env
from ..tasks import TaskSet
from .channels import kernel_stream
from .kernel import GatewayKernel

# Requests whose status messages do not make a kernel "busy" for clients and culling.
UNTRACKED_PARENTS = {"kernel_info_request", "comm_info_request", "shutdown_request", "interrupt_request"}


def status_of(frames: list[Any], session: Session) -> str | None:
    """'busy' or 'idle' from a status message that counts, read from its small frames only; None for
    any other message (its content is never touched). A status message's signature is checked."""
    try:
        idx = next(i for i, f in enumerate(frames[:16]) if len(f) == len(DELIM) and f.bytes == DELIM)
        header = json.loads(frames[idx + 2].bytes)
        if header.get("msg_type") != "status":
            return None
        signed = [frames[idx + k].bytes for k in range(2, 6)]
        if session.auth is not None and not compare_digest(frames[idx + 1].bytes, session.sign(signed)):
            return None
        if (json.loads(signed[1]) or {}).get("msg_type") in UNTRACKED_PARENTS:
            return None
        state = json.loads(signed[3]).get("execution_state")
    except Exception:  # noqa: BLE001 - a malformed message is not our problem here
        return None
    return state if state in ("busy", "idle") else None


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


class LivenessHost(Protocol):
    """What liveness needs of the kernel store."""

    log: Any
    autorestart: bool
    autorestart_limit: int
    autorestart_window: float

    @property
    def closing(self) -> bool: ...

    def find(self, kernel_id: str) -> GatewayKernel | None: ...

    def restart_in_place(self, km: GatewayKernel) -> Awaitable[GatewayKernel]: ...  # the lifecycle lock held


class Liveness:
    def __init__(self, host: LivenessHost) -> None:
        self.host = host
        self._autorestarts = TaskSet(host.log, "automatic restart")

    async def wait(self) -> None:
        """Wait for automatic restarts in flight (gateway exit)."""
        await self._autorestarts.wait()

    def watch(self, km: GatewayKernel) -> None:
        """Follow the kernel's iopub for busy/idle and its container for exit."""
        self.unwatch(km)
        stream = kernel_stream(km, "iopub")

        def on_iopub(frames: list[Any]) -> None:
            km.touch()
            state = status_of(frames, km.session)  # signing is stateless: no Session of its own per kernel
            if state is None or km.restarting:
                return
            km.execution_state = state

        # Frames, not bytes: an output's frames are never copied or hashed here (one display() of
        # 300 MB used to be copied once more and its HMAC computed on the event loop).
        stream.on_recv(on_iopub, copy=False)
        km._activity_stream = stream
        prov = km.docker
        if prov is not None:
            prov.exit_callback = lambda code: self._on_container_exit(km, code)

    def unwatch(self, km: GatewayKernel) -> None:
        if km._activity_stream is not None:
            km._activity_stream.close()
            km._activity_stream = None

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
