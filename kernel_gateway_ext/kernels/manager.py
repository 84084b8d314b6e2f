"""The kernel store.

`GatewayKernelManager` is a jupyter_client `AsyncMultiKernelManager` that starts kernels for an
owner, waits until they answer, never keeps a half-started one, and tells listeners (the
websockets) when a kernel dies, restarts or moves. Its other concerns are collaborators, one module
each, wired in the constructor and reaching the store only through a small protocol: `pool` (warm
pools), `tokens` (v2 get-or-create by client token), `capacity` (limits and the memory budget),
`adoption` (records and adoption after a restart), `culling` (idle deadlines), `liveness` (activity,
death and automatic restarts); `probes` asks a kernel process directly; `actions` (a mixin) restarts,
interrupts and shuts kernels down. Who may see a kernel is not
its business: the dialects ask the authorizer (auth/authorizer.py).
"""
from __future__ import annotations

import asyncio
import builtins
import os
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from traitlets import Dict, Float, Instance, List, Unicode

from ..config import apply_env, env
from ..containers import current_backend
from ..containers.fleet import FLEET
from ..containers.limits import KernelLimits
from ..containers.spec import BindMount
from ..errors import Forbidden, GatewayError, KernelNotFound, KernelStartFailed
from ..provisioners.docker import DockerProvisioner
from ..provisioners.launch import LAUNCH_REQUEST, LaunchRequest
from ..replicas.capacity import SharedCapacity
from ..store import Store
from ..tasks import Deadlines
from .actions import KernelActions
from .adoption import Adopter, KernelRecords
from .capacity import DOCKER_PROVISIONER, Capacity, CapacitySettings
from .channels import raise_socket_limits
from .culling import Culler, CullingSettings
from .kernel import GatewayKernel, Listener, isoformat, utcnow
from .liveness import Liveness, LivenessSettings
from .pool import PoolSettings, WarmPool
from .probes import wait_ready
from .specs import GatewayKernelSpecManager
from .tokens import ClientTokens

__all__ = ["GatewayKernel", "GatewayKernelManager", "Listener", "isoformat", "utcnow"]

# What a local (fallback) kernel process gets from the gateway's environment.
LOCAL_BASE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")

# observe(event, kernelspec, source, seconds): starts, failures, culls and refusals, for metrics.
Observer = Callable[[str, str, str, float], None]


class GatewayKernelManager(KernelActions, CapacitySettings, PoolSettings, CullingSettings, LivenessSettings,
                           AsyncMultiKernelManager):
    """Kernels with owners; every dialect goes through here. (The *Settings bases hold options only;
    KernelActions holds restart, interrupt and shutdown.)"""

    kernel_manager_class = Unicode("kernel_gateway_ext.kernels.kernel.GatewayKernel").tag(config=True)
    kernel_spec_manager = Instance(GatewayKernelSpecManager)
    store = Instance(Store, allow_none=True, help="Where kernel records outlive the process (set by the app).")
    ready_timeout = env(
        Float(60.0, help="Seconds a new kernel may take to answer kernel_info."), "KGE_KERNEL_READY_TIMEOUT"
    )
    env_allowlist = env(
        List(Unicode(), help="Names of variables a start request may pass into its kernel besides KERNEL_* "
                             "(the gateway's own environment never passes)."), "KGE_ENV_ALLOWLIST"
    )
    run_flush_interval = env(
        Float(3.0, help="Seconds a REST execute waits before answering 'continued'."), "KGE_RUN_FLUSH_INTERVAL"
    )
    lang_aliases = Dict(
        {"python": "python3", "python3": "python3", "python:3": "python3", "python:3.6": "python3",
         "python:latest": "python3", "lablup/kernel-python:3.6-debian": "python3", "lablup/python:3.6-ubuntu18.04": "python3",
         "bash": "bash", "shell": "bash", "sh": "bash"},
        help="Languages and image names REST callers may name, mapped to kernelspecs.",
    ).tag(config=True)

    def __init__(self, *, derive_secret: Callable[[str, str], str] | None = None, observer: Observer | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        apply_env(self, set(kwargs))
        self._derive_secret = derive_secret  # (purpose, nonce) -> a secret derived from the master key
        self._observer = observer
        raise_socket_limits(self.context)  # before the first socket: ~1000 sockets is not enough
        # Set by the app when it runs local-process kernels: the one owner they may serve.
        self.local_only_owner: str | None = None
        self._starting: dict[str, GatewayKernel] = {}
        self._closing = False
        self._removal_callbacks: list[Callable[[str], None]] = []
        self._change_callbacks: list[Callable[[], None]] = []
        self._release_callbacks: list[Callable[[], None]] = []
        # Collaborators: each reaches the store through its own small protocol.
        self.deadlines = Deadlines(self.log)
        self.records = KernelRecords(self.store, self.log, in_store=lambda km: self._kernels.get(km.kernel_id) is km)
        self.adopter = Adopter(self, self.records)
        self.capacity = Capacity(self, provisioner_defaults=lambda: DockerProvisioner(parent=self))
        self.shared: SharedCapacity | None = None  # with replicas: capacity across them
        self.liveness = Liveness(self)
        self.pool = WarmPool(self, self.capacity)
        self.culler = Culler(self, self.deadlines)
        self.tokens = ClientTokens(self)

    def on_removal(self, callback: Callable[[str], None]) -> None:
        """Call `callback(kernel_id)` whenever a kernel leaves the store."""
        self._removal_callbacks.append(callback)

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever a kernel comes, goes or changes its execution state."""
        self._change_callbacks.append(callback)

    def changed(self) -> None:
        for cb in self._change_callbacks:
            cb()

    def on_output_released(self, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever an idle kernel's output subscription is let go (iopub.py)."""
        self._release_callbacks.append(callback)

    def output_released(self) -> None:
        for cb in self._release_callbacks:
            cb()

    def _removed(self, kernel_id: str) -> None:
        self.deadlines.cancel(kernel_id)
        km = self._kernels.pop(kernel_id, None)
        if isinstance(km, GatewayKernel):
            self.records.delete_later(km)
        for cb in self._removal_callbacks:
            cb(kernel_id)
        self.changed()

    # ---- lookup (who may see what is the authorizer's to say) ---------------------------------
    def find(self, kernel_id: str) -> GatewayKernel | None:
        km = self._kernels.get(kernel_id)
        return km if isinstance(km, GatewayKernel) else None

    def get(self, kernel_id: str) -> GatewayKernel:
        km = self.find(kernel_id)
        if km is None:
            raise KernelNotFound(f"Kernel does not exist: {kernel_id}")
        return km

    def get_by_id_or_token(self, ident: str) -> GatewayKernel:
        """A kernel by its id or, as Backend.AI's session id, by its client token (any owner's)."""
        km = self.find(ident) or next(iter(self.with_token(ident)), None)
        if km is None:
            raise KernelNotFound(f"Kernel does not exist: {ident}")
        return km

    def with_token(self, client_token: str) -> list[GatewayKernel]:
        """The kernels a v2 client token names: one per owner at most."""
        return [km for km in self.list() if km.client_token == client_token]

    def list(self) -> list[GatewayKernel]:  # noqa: A003 - jupyter_client's MultiKernelManager naming
        return [km for km in self._kernels.values() if isinstance(km, GatewayKernel)]

    # ---- what the collaborators ask of the store (their *Host protocols) ----------------------
    @property
    def closing(self) -> bool:
        return self._closing

    def every_kernel(self) -> Iterable[GatewayKernel]:
        yield from self.list()
        yield from self._starting.values()
        yield from self.pool.kernels()

    def kernels_of(self, owner: str) -> int:
        return sum(1 for km in [*self.list(), *self._starting.values()] if km.owner == owner)

    def count_event(self, event: str, kernelspec: str, source: str = "", seconds: float = 0.0) -> None:
        if self._observer is not None:
            self._observer(event, kernelspec, source, seconds)

    def new_kernel(self, kernel_name: str, kernel_id: str) -> GatewayKernel:
        km, _, _ = self.pre_start_kernel(kernel_name, {"kernel_id": kernel_id})
        assert isinstance(km, GatewayKernel)
        km.kernel_id = kernel_id
        km.state_observer = self.changed
        return km

    def derive_key(self, km: GatewayKernel) -> None:
        """The kernel's connection key, from the master key, its id and a nonce the store keeps."""
        if self._derive_secret is None:
            return
        assert km.kernel_id, "a kernel's key is derived from its id: set it first"
        km.key_nonce = km.key_nonce or secrets.token_hex(16)
        km.session.key = self._derive_secret(f"kernel:{km.kernel_id}", km.key_nonce).encode()

    def launch_kwargs(self, request: LaunchRequest) -> dict[str, Any]:
        """start_kernel's keywords for a request (kept by jupyter_client for restarts)."""
        if self._provisioner_of(request.kernel_name) == DOCKER_PROVISIONER:
            return {LAUNCH_REQUEST: request}
        # A local process: the minimum it needs to run, never the gateway's secrets.
        base = {k: os.environ[k] for k in LOCAL_BASE_ENV if k in os.environ}
        return {"env": {**base, **request.all_env}}

    def admit(self, km: GatewayKernel) -> None:
        self._kernels[km.kernel_id] = km
        km.state_observer = self.changed
        self.changed()

    def forget(self, kernel_id: str) -> None:
        self._kernels.pop(kernel_id, None)

    def watch(self, km: GatewayKernel) -> None:
        self.liveness.watch(km)

    def arm_cull(self, km: GatewayKernel) -> None:
        self.culler.arm(km)

    def _provisioner_of(self, kernel_name: str) -> str | None:
        spec = self.kernel_spec_manager.get_kernel_spec(kernel_name)
        return (spec.metadata.get("kernel_provisioner") or {}).get("provisioner_name")

    # ---- start --------------------------------------------------------------------------------
    async def start(
        self,
        *,
        owner: str,
        kernel_name: str | None = None,
        env: dict[str, Any] | None = None,
        limits: KernelLimits | None = None,
        mounts: builtins.list[BindMount] | None = None,
        labels: dict[str, str] | None = None,
        user_env: dict[str, str] | None = None,
        exec_timeout: float | None = None,
        idle_timeout: float | None = None,
        lang: str = "",
        client_token: str | None = None,
    ) -> GatewayKernel:
        """Start a kernel for `owner` and return it once it answers kernel_info.

        `env` is a Jupyter request's (only KERNEL_* and the allow-list pass); `user_env` is what
        a REST caller explicitly set for its kernel, passed as given. A pooled kernel is handed
        out when it can be made exactly what was asked; otherwise the start is cold."""
        if self.local_only_owner is not None and owner != self.local_only_owner:
            raise Forbidden("this gateway has no container engine: its local-process kernels serve only its own user")
        name = kernel_name or self.kernel_spec_manager.default_name
        # An unknown name is a 404 before anything counts it (every name would be a metric series).
        self.kernel_spec_manager.get_kernel_spec(name)
        if self.local_only_owner is None:
            await FLEET.refresh(current_backend())  # a cluster's nodes come and go
        capacity = self.capacity
        capacity.check_limits(limits, exec_timeout)
        self._refuse_unless(lambda: capacity.check_owner(owner), name, "owner_max")
        request = LaunchRequest.build(owner=owner, kernel_name=name, requested_env=env, user_env=user_env,
                                      allowlist=self.env_allowlist, limits=limits, mounts=mounts, labels=labels)
        began = time.monotonic()
        # A pooled kernel is promised its default memory already; asking more must fit the rest.
        extra = capacity.memory_of(name, limits) - capacity.memory_of(name, None)
        if extra > 0 and self.pool.has_ready(name) and self.pool.servable(request):
            self._refuse_unless(lambda: capacity.check_memory(extra), name, "memory_budget")
        if self.shared is None:
            return await self._start(request, owner, name, began, lang, client_token, limits, exec_timeout,
                                     idle_timeout)
        # Replicas: the limits hold across them (admitted under a lock in the store).
        pooled = self.pool.has_ready(name) and self.pool.servable(request)
        pending = await self.shared.admit(owner, kernels=0 if pooled else 1,
                                          memory=max(extra, 0) if pooled else capacity.memory_of(name, limits))
        shared = self.shared
        try:
            return await self._start(request, owner, name, began, lang, client_token, limits, exec_timeout,
                                     idle_timeout, counted=lambda: shared.done(pending))
        finally:
            shared.done(pending)  # a start that failed (once counted, nothing happens)

    async def _start(self, request: LaunchRequest, owner: str, name: str, began: float, lang: str,
                     client_token: str | None, limits: KernelLimits | None, exec_timeout: float | None,
                     idle_timeout: float | None, counted: Callable[[], None] | None = None) -> GatewayKernel:
        capacity = self.capacity
        km = await self.pool.take(request)
        source = "pooled" if km is not None else "cold"
        if km is None:
            self._refuse_unless(capacity.check_count, name, "max_kernels")
            # A pooled kernel is promised already; a cold one must fit the budget.
            self._refuse_unless(lambda: capacity.check_memory(capacity.memory_of(name, limits)), name, "memory_budget")
            try:
                km = await self.launch(request)
            except GatewayError:
                self.count_event("start_failure", name)
                raise
        self.count_event("start", name, source, time.monotonic() - began)
        km.owner = owner
        km.lang = lang or name
        km.client_token = client_token
        km.limits = limits or KernelLimits()
        km.exec_timeout = exec_timeout
        km.idle_timeout = idle_timeout
        if km.docker is not None:
            km.docker.owner = owner
        km.execution_state = "idle"
        try:
            self.watch(km)
        except Exception as e:  # out of sockets, say: the caller gets why, and no kernel is left
            await self.discard(km)
            self.count_event("start_failure", name)
            raise KernelStartFailed(f"kernel {name!r} started but could not be watched: {e}") from e
        self.admit(km)
        if counted is not None:  # in the store now: what was pending for it is not counted twice
            counted()
        self.arm_cull(km)
        try:
            await self.records.put(km)
        except Exception as e:  # noqa: BLE001 - the kernel works; it just would not survive a crash
            self.log.warning("Kernel %s: its record could not be written: %s", km.kernel_id, e)
        self.log.info("Kernel started: %s (%s) for %s", km.kernel_id, name, owner)
        return km

    def _refuse_unless(self, check: Callable[[], None], kernelspec: str, reason: str) -> None:
        try:
            check()
        except GatewayError:
            self.count_event("rejected", kernelspec, reason)
            raise

    async def launch(self, request: LaunchRequest) -> GatewayKernel:
        """A new kernel, answering kernel_info, not yet in the store; nothing left on failure."""
        kwargs = self.launch_kwargs(request)
        name = request.kernel_name
        km, name, kernel_id = self.pre_start_kernel(name, kwargs)
        assert isinstance(km, GatewayKernel)
        km.kernel_id = kernel_id  # jupyter_client sets it only in start_kernel: the key is derived from it
        km.owner = request.owner
        if self._provisioner_of(name) == DOCKER_PROVISIONER:
            self.derive_key(km)
        kwargs["kernel_id"] = kernel_id
        self._starting[kernel_id] = km
        try:
            await km.start_kernel(**kwargs)
            await wait_ready(km, self.ready_timeout)
        except BaseException as e:
            await self.discard(km)
            if isinstance(e, (GatewayError, asyncio.CancelledError)):
                raise
            raise KernelStartFailed(f"kernel {name!r} failed to start: {e}") from e
        finally:
            self._starting.pop(kernel_id, None)
        return km

    async def discard(self, km: GatewayKernel) -> None:
        """Remove every trace of a kernel that failed to start (or a pooled one that is not wanted)."""
        self.liveness.unwatch(km)  # a pooled kernel's output subscription
        try:
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
            else:
                await km.cleanup_resources()
        except Exception:  # noqa: BLE001 - best effort; log and go on
            self.log.warning("Cleanup of failed kernel %s was incomplete", km.kernel_id, exc_info=True)
        self._kernels.pop(km.kernel_id, None)
