"""One kernel of the store: a jupyter_client `AsyncKernelManager` that also knows its owner,
activity, state and listeners (the websockets)."""
from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar, cast

from jupyter_client.manager import AsyncKernelManager, KernelManager
from ..provisioners.docker import DockerProvisioner
from ..containers.limits import KernelLimits
from .execution import Runner
from .iopub import IopubHub

# A listener may return an awaitable; `notify_and_wait` waits for them (a restart is not
# answered before every open websocket is subscribed to the new kernel's output again).
Listener = Callable[[str, dict[str, Any]], Any]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def isoformat(dt: datetime) -> str:
    """The exact format jupyter_server's GatewayClient parses: %Y-%m-%dT%H:%M:%S.%fZ."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


F = TypeVar("F", bound=Callable[..., Any])


def pending_state(decorated: F) -> F:
    """jupyter_client's `in_pending_state` (a fresh `ready` future, settled when the method ends)
    without the `asyncio.sleep(0.01)` it adds after every start and shutdown for its own tests:
    10 ms on each start and delete, 20 on each restart. `decorated` is jupyter_client's method."""
    method = getattr(decorated, "__wrapped__", None)
    if method is None:  # a jupyter_client that no longer wraps it: keep its own
        return decorated

    @functools.wraps(method)
    async def wrapper(self: GatewayKernel, *args: Any, **kwargs: Any) -> None:
        if self._attempted_start or not self._ready:
            self._ready = asyncio.get_running_loop().create_future()
        ready = self._ready
        try:
            await method(self, *args, **kwargs)
        except BaseException as e:
            if not ready.done():
                ready.set_exception(e if isinstance(e, Exception) else asyncio.CancelledError())
                ready.exception()  # the caller gets the error; nobody need await `ready` for it
            raise
        if self.owns_kernel and not ready.done():
            ready.set_result(None)

    return cast(F, wrapper)


class GatewayKernel(AsyncKernelManager):
    """One kernel of the store."""

    _async_start_kernel = pending_state(KernelManager._async_start_kernel)
    _async_shutdown_kernel = pending_state(KernelManager._async_shutdown_kernel)
    start_kernel = _async_start_kernel
    shutdown_kernel = _async_shutdown_kernel

    state_observer: Callable[[], None] | None = None  # told when execution_state changes (the page's live list)

    @property
    def execution_state(self) -> str:
        return self._execution_state

    @execution_state.setter
    def execution_state(self, state: str) -> None:
        changed = state != getattr(self, "_execution_state", None)
        self._execution_state = state
        if changed and self.state_observer is not None:
            self.state_observer()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.owner = ""
        self.created = utcnow()
        self.created_monotonic = time.monotonic()
        self.last_activity = self.created
        self.execution_state = "starting"
        self.reason = ""
        self.connections = 0
        self.restarting = False
        self.stopping = False
        # Restart and shutdown never overlap (jupyter_client's start/stop futures would clash).
        self.lifecycle = asyncio.Lock()
        self.restart_count = 0
        self.autorestarts: list[float] = []  # monotonic times of automatic restarts (liveness.py)
        self.generation = 0  # bumped when the kernel's address changes; sockets reconnect
        self._listeners: set[Listener] = set()
        self.iopub: IopubHub | None = None  # its one output subscription (iopub.py), while watched
        self.output_release_after = 0.0  # s an unread, idle, quiet subscription is kept (liveness sets it)
        self.on_output_released: Callable[[], None] | None = None  # told when it is let go (memory trim)
        # Set by REST (v2) callers: their token and language, limits, query count, runner.
        self.client_token: str | None = None
        self.lang = ""
        self.limits = KernelLimits()
        self.exec_timeout: float | None = None
        self.idle_timeout: float | None = None  # a REST caller's own (v2 idleTimeout); None: the server's
        self.num_queries = 0
        self._runner: Runner | None = None
        # The connection key is derived from the master key and this nonce (kept in the store):
        # an adopting gateway can talk to the kernel again, and the database holds no key.
        self.key_nonce = ""
        self.persisted = False

    def record(self) -> dict[str, Any]:
        """What the store keeps so that a later gateway process can adopt this kernel."""
        prov = self.docker
        return {
            "kernel_name": self.kernel_name, "lang": self.lang, "client_token": self.client_token,
            "limits": {k: v for k, v in vars(self.limits).items() if v is not None},
            "exec_timeout": self.exec_timeout, "idle_timeout": self.idle_timeout, "created": self.created.timestamp(),
            "restart_count": self.restart_count, "key_nonce": self.key_nonce,
            "container_id": prov.container_id if prov is not None else None,
            "hot_mounts": [vars(m) for m in prov.hot_mounts] if prov is not None else [],
            "ipc_dir": prov.ipc_dir if prov is not None else "",
        }

    def cleanup_ipc_files(self) -> None:
        """A container kernel's IPC sockets are its own, in its folder (removed with its container):
        jupyter_client's removal after a restart's shutdown could take the restarted kernel's."""
        if self.docker is None:
            super().cleanup_ipc_files()

    def write_connection_file(self, **kwargs: Any) -> None:
        """A container kernel gets its connection file inside the container only (its user's, written by
        its nanny from stdin): no copy holding the key is written on the host."""
        if self.docker is not None:
            self._connection_file_written = True
            return
        super().write_connection_file(**kwargs)

    def effective_limits(self) -> KernelLimits:
        """The limits the kernel's container has: what was asked, the rest from its provisioner's
        defaults. The one reading of them, for capacity, stats and every dialect's info."""
        prov = self.docker
        if prov is None:
            return self.limits
        return prov.resolve(self.limits)

    def runner(self, flush_interval: float) -> Runner:
        if self._runner is None:
            self._runner = Runner(self, flush_interval)
        return self._runner

    # ---- listeners (websocket connections) ----------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    def notify(self, event: str, **data: Any) -> list[Any]:
        results = []
        for listener in list(self._listeners):
            try:
                results.append(listener(event, data))
            except Exception:  # noqa: BLE001 - one broken socket must not stop the others
                self.log.exception("kernel listener failed")
        return results

    async def notify_and_wait(self, event: str, **data: Any) -> None:
        waits = [r for r in self.notify(event, **data) if asyncio.isfuture(r) or asyncio.iscoroutine(r)]
        for result in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(result, Exception):
                self.log.warning("Kernel %s: a listener failed after %s: %s", self.kernel_id, event, result)

    @property
    def docker(self) -> DockerProvisioner | None:
        return self.provisioner if isinstance(self.provisioner, DockerProvisioner) else None

    async def _async_post_start_kernel(self, **kw: Any) -> None:
        """jupyter_client's, less the control socket it connects for every kernel: a shutdown
        request and a message-mode interrupt connect it when they are sent (both call
        _connect_control_socket first), so an idle kernel holds no ZMQ connection for it."""
        self.start_restarter()
        assert self.provisioner is not None
        await self.provisioner.post_launch(**kw)

    async def _async_wait(self, pollinterval: float = 0.1) -> None:
        """Until the kernel process has ended: for a container kernel, on the engine's own event
        (jupyter_client asks every 100 ms, which made every shutdown wait 100-200 ms for nothing)."""
        prov = self.docker
        if prov is None:
            await super()._async_wait(pollinterval)
            return
        await prov.wait()

    def model(self) -> dict[str, Any]:
        return {
            "id": self.kernel_id,
            "name": self.kernel_name,
            "last_activity": isoformat(self.last_activity),
            "execution_state": self.execution_state,
            "connections": self.connections,
            **({"reason": self.reason} if self.reason else {}),
            **({"node": node} if (node := self.node) else {}),
        }

    @property
    def node(self) -> str:
        """The machine its container runs on ('' for a local process or before it is placed)."""
        prov = self.docker
        return prov.node if prov is not None else ""

    def touch(self) -> None:
        self.last_activity = utcnow()
