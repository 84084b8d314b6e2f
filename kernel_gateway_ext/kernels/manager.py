"""The kernel store.

`GatewayKernelManager` is a jupyter_client `AsyncMultiKernelManager` that starts kernels for an
owner, waits until they answer, never keeps a half-started one, and tells listeners (the
websockets) when a kernel dies, restarts or moves. Its other concerns live beside it, one module
each: `kernel` (one kernel), `pool` (warm pools), `capacity` (limits and the memory budget),
`adoption` (records and adoption after a restart), `culling` (idle deadlines), `liveness`
(activity, death and automatic restarts).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from jupyter_client.session import Session
from traitlets import Dict, Float, Instance, List, Unicode
from zmq.utils.monitor import parse_monitor_message

from ..config import apply_env, env
from ..errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    KernelDead,
    KernelNotFound,
    KernelSpecNotFound,
    KernelStartFailed,
    OverCapacity,
    TooManyKernels,
)
from ..provisioners.launch import LAUNCH_REQUEST, LaunchRequest
from ..containers.limits import KernelLimits
from ..containers.spec import BindMount
from ..tasks import TaskSet
from .adoption import RECORD_KIND, AdoptionMixin
from .capacity import DOCKER_PROVISIONER, CapacityMixin
from ..tasks import Deadlines
from .culling import Culler, CullingSettings
from .channels import zmq_url
from .kernel import GatewayKernel, Listener, isoformat, utcnow
from .liveness import LivenessMixin
from .pool import PoolSettings, WarmPool
from .specs import GatewayKernelSpecManager

__all__ = ["GatewayKernel", "GatewayKernelManager", "Listener", "isoformat", "utcnow"]

# What a local (fallback) kernel process gets from the gateway's environment.
LOCAL_BASE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")


class GatewayKernelManager(AdoptionMixin, CapacityMixin, PoolSettings, CullingSettings, LivenessMixin,
                           AsyncMultiKernelManager):
    """Kernels with owners; every dialect goes through here."""

    kernel_manager_class = Unicode("kernel_gateway_ext.kernels.kernel.GatewayKernel").tag(config=True)
    kernel_spec_manager = Instance(GatewayKernelSpecManager)
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


    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        apply_env(self, set(kwargs))
        # Set by the app: (purpose, nonce) -> a secret derived from the master key.
        self.derive_secret: Callable[[str, str], str] | None = None
        self._store_tasks = TaskSet(self.log, "store write")
        self._default_mem_limit: str | None = None
        self.deadlines = Deadlines(self.log)
        self._starting: dict[str, GatewayKernel] = {}
        # (owner, token) -> [lock, users]: get-or-create is serialized per token, and an entry is
        # dropped when nobody holds or awaits it (tokens are often random: unbounded otherwise).
        self._token_locks: dict[tuple[str, str], list[Any]] = {}
        self._autorestart_tasks = TaskSet(self.log, "automatic restart")
        self._closing = False
        self.pool = WarmPool(self)  # collaborators: each uses the store through a small protocol
        self.culler = Culler(self, self.deadlines)
        self._removal_callbacks: list[Callable[[str], None]] = []

    def on_removal(self, callback: Callable[[str], None]) -> None:
        """Call `callback(kernel_id)` whenever a kernel leaves the store."""
        self._removal_callbacks.append(callback)

    def _removed(self, kernel_id: str) -> None:
        self.deadlines.cancel(kernel_id)
        km = self._kernels.pop(kernel_id, None)
        if km is not None and getattr(km, "persisted", False) and self.store is not None:
            self._store_tasks.spawn(self.store.delete_record(RECORD_KIND, kernel_id))
        for cb in self._removal_callbacks:
            cb(kernel_id)

    # ---- lookup -------------------------------------------------------------------------------
    def get(self, kernel_id: str, owner: str | None = None) -> GatewayKernel:
        """The kernel, if it exists and `owner` may see it (None: any owner)."""
        km = self._kernels.get(kernel_id)
        if km is None or (owner is not None and km.owner != owner):
            raise KernelNotFound(f"Kernel does not exist: {kernel_id}")
        return km  # type: ignore[return-value]

    def get_by_id_or_token(self, ident: str, owner: str | None = None) -> GatewayKernel:
        """A kernel by its id or, as Backend.AI's session id, by its client token."""
        try:
            return self.get(ident, owner)
        except KernelNotFound:
            for km in self.list(owner):
                if km.client_token == ident:
                    return km
            raise

    def list(self, owner: str | None = None) -> list[GatewayKernel]:
        kms: list[GatewayKernel] = list(self._kernels.values())  # type: ignore[arg-type]
        return [k for k in kms if owner is None or k.owner == owner]

    # ---- start --------------------------------------------------------------------------------
    def _launch_kwargs(self, request: LaunchRequest) -> dict[str, Any]:
        """start_kernel's keywords for a request (kept by jupyter_client for restarts)."""
        spec = self.kernel_spec_manager.get_kernel_spec(request.kernel_name)
        provisioner = (spec.metadata.get("kernel_provisioner") or {}).get("provisioner_name")
        if provisioner == DOCKER_PROVISIONER:
            return {LAUNCH_REQUEST: request}
        # A local process: the minimum it needs to run, never the gateway's secrets.
        base = {k: os.environ[k] for k in LOCAL_BASE_ENV if k in os.environ}
        return {"env": {**base, **request.all_env}}

    async def start(
        self,
        *,
        owner: str,
        kernel_name: str | None = None,
        env: dict[str, Any] | None = None,
        limits: KernelLimits | None = None,
        mounts: list[BindMount] | None = None,
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
        self.check_limits(limits, exec_timeout)
        if self.max_kernels_per_owner and len(self.list(owner)) + self._starting_for(owner) >= self.max_kernels_per_owner:
            self._observe("rejected", name, "owner_max")
            raise TooManyKernels(f"{owner} already has the maximum of {self.max_kernels_per_owner} kernels")
        request = LaunchRequest.build(owner=owner, kernel_name=name, requested_env=env, user_env=user_env,
                                      allowlist=self.env_allowlist, limits=limits, mounts=mounts, labels=labels)
        began = time.monotonic()
        km = await self.pool.take(request)
        source = "pooled" if km is not None else "cold"
        if km is None:
            if self.max_kernels and self._count() >= self.max_kernels:
                self._observe("rejected", name, "max_kernels")
                raise TooManyKernels(f"the gateway runs its maximum of {self.max_kernels} kernels")
            try:
                self.check_capacity(self.memory_of(name, limits))  # a pooled kernel is promised already
            except OverCapacity:
                self._observe("rejected", name, "memory_budget")
                raise
            try:
                km = await self._launch(request)
            except GatewayError:
                self._observe("start_failure", name)
                raise
        self._observe("start", name, source, time.monotonic() - began)
        km.owner = owner
        km.lang = lang or name
        km.client_token = client_token
        km.limits = limits or KernelLimits()
        km.exec_timeout = exec_timeout
        km.idle_timeout = idle_timeout
        if km.docker is not None:
            km.docker.owner = owner
        km.execution_state = "idle"
        self._kernels[km.kernel_id] = km
        self._watch(km)
        self.arm_cull(km)
        try:
            await self.persist(km)
        except Exception as e:  # noqa: BLE001 - the kernel works; it just would not survive a crash
            self.log.warning("Kernel %s: its record could not be written: %s", km.kernel_id, e)
        self.log.info("Kernel started: %s (%s) for %s", km.kernel_id, name, owner)
        return km

    # Set by the app when it runs local-process kernels: the one owner they may serve.
    local_only_owner: str | None = None

    # Set by the app: called as observe(event, kernelspec, source, seconds) for metrics.
    observer: Callable[..., None] | None = None

    def _observe(self, *args: Any) -> None:
        if self.observer is not None:
            self.observer(*args)

    def count_event(self, event: str, kernelspec: str, source: str = "", seconds: float = 0.0) -> None:
        self._observe(event, kernelspec, source, seconds)

    def find(self, kernel_id: str) -> GatewayKernel | None:
        km = self._kernels.get(kernel_id)
        return km if isinstance(km, GatewayKernel) else None

    def idle_timeout_of(self, km: GatewayKernel) -> float:
        return self.culler.idle_timeout_of(km)

    def arm_cull(self, km: GatewayKernel, at: float | None = None) -> None:
        self.culler.arm(km, at)

    def _count(self) -> int:
        return len(self._kernels) + len(self._starting) + self.pool.count()

    # ---- what the warm pool needs (pool.PoolHost) ---------------------------------------------
    @property
    def closing(self) -> bool:
        return self._closing

    def room_for_pooled(self, name: str, filling: int) -> bool:
        """Room for one more pooled kernel besides `filling` being made: within max_kernels and the budget."""
        if self.max_kernels and self._count() + filling >= self.max_kernels:
            return False
        budget = self.budget_bytes()
        return not (budget and self.promised_memory() + (filling + 1) * self.memory_of(name, None) > budget)

    async def launch(self, request: LaunchRequest) -> GatewayKernel:
        return await self._launch(request)

    async def discard(self, km: GatewayKernel) -> None:
        await self._discard(km)

    def fill_pools(self) -> None:
        self.pool.fill()

    async def _launch(self, request: LaunchRequest) -> GatewayKernel:
        """A new kernel, answering kernel_info, not yet in the store; nothing left on failure."""
        kwargs = self._launch_kwargs(request)
        name, owner = request.kernel_name, request.owner
        km, name, kernel_id = self.pre_start_kernel(name, kwargs)
        assert isinstance(km, GatewayKernel)
        km.owner = owner
        if DOCKER_PROVISIONER == (km.kernel_spec.metadata.get("kernel_provisioner") or {}).get("provisioner_name"):
            self._derive_key(km, kernel_id)
        kwargs["kernel_id"] = kernel_id
        self._starting[kernel_id] = km
        try:
            await km.start_kernel(**kwargs)
            await self.wait_ready(km)
        except BaseException as e:
            await self._discard(km)
            if isinstance(e, (GatewayError, asyncio.CancelledError)):
                raise
            raise KernelStartFailed(f"kernel {name!r} failed to start: {e}") from e
        finally:
            self._starting.pop(kernel_id, None)
        return km

    # ---- REST callers: limits, languages, get-or-create by client token ------------------------
    def resolve_lang(self, lang: str) -> str:
        """A REST caller's language or image name -> a runnable kernelspec name."""
        runnable = self.kernel_spec_manager.runnable_specs()
        if lang in runnable:
            return lang
        target = self.lang_aliases.get(lang)
        if target in runnable:
            return target
        raise KernelSpecNotFound(f"unknown language or image {lang!r}; known: {', '.join(sorted(runnable))}")

    async def get_or_start(self, *, owner: str, client_token: str, lang: str, **start_kw: Any) -> tuple[GatewayKernel, bool]:
        """The owner's kernel for `client_token` (created False), or a new one (created True)."""
        key = (owner, client_token)
        entry = self._token_locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                for km in self.list(owner):
                    if km.client_token == client_token:
                        if km.lang != lang:
                            raise BadRequest(f"session token {client_token!r} is in use with another language ({km.lang})")
                        return km, False
                kernel_name = self.resolve_lang(lang)
                km = await self.start(owner=owner, kernel_name=kernel_name, lang=lang, client_token=client_token, **start_kw)
                return km, True
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._token_locks.pop(key, None)

    async def _discard(self, km: GatewayKernel) -> None:
        """Remove every trace of a kernel that failed to start."""
        try:
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
            else:
                await km.cleanup_resources()
        except Exception:  # noqa: BLE001 - best effort; log and go on
            self.log.warning("Cleanup of failed kernel %s was incomplete", km.kernel_id, exc_info=True)
        self._kernels.pop(km.kernel_id, None)

    async def wait_ready(self, km: GatewayKernel, timeout: float | None = None) -> None:
        """Wait for a kernel_info_reply on a fresh shell socket.

        Not jupyter_client's wait_for_ready: that one adds ~0.4 s of iopub flushing to every
        start. A queued request reaches the kernel as soon as it binds; it is re-sent each second
        in case the first went to a previous kernel process.
        """
        timeout = self.ready_timeout if timeout is None else timeout
        info = km.get_connection_info()
        session = Session(key=km.session.key, signature_scheme=km.session.signature_scheme)
        ctx = zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(zmq_url(info, "shell"))
        deadline = time.monotonic() + timeout
        try:
            while True:
                msg = session.msg("kernel_info_request")
                session.send(sock, msg)
                tick = time.monotonic() + 1.0
                while (left := min(tick, deadline) - time.monotonic()) > 0:
                    if not await sock.poll(left * 1000):
                        break
                    parts = await sock.recv_multipart()
                    _, fed = session.feed_identities(parts)
                    reply = session.deserialize(fed, content=False)
                    if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                        return
                if not await km.is_alive():
                    reason = await self._death_reason(km)
                    raise KernelStartFailed(f"kernel died before it was ready ({reason})")
                if time.monotonic() >= deadline:
                    raise KernelStartFailed(f"kernel did not answer within {timeout:.0f} s")
        finally:
            sock.close(0)

    async def _death_reason(self, km: GatewayKernel) -> str:
        prov = km.docker
        if prov is None:
            return "process exited"
        code = await prov.poll()
        if prov.oom_killed:
            return "killed: out of memory"
        tail = (await prov.logs(tail=5)).strip().splitlines()
        last = tail[-1][:200] if tail else ""
        return f"exit code {code}" + (f": {last}" if last else "")

    # ---- actions ------------------------------------------------------------------------------
    async def restart(self, kernel_id: str, owner: str | None = None) -> GatewayKernel:
        """Restart in place: same id, address and key; open connections keep working."""
        km = self.get(kernel_id, owner)
        if km.restarting or km.stopping or km.lifecycle.locked():
            raise KernelDead("kernel is already restarting or shutting down", status=409)
        async with km.lifecycle:
            return await self._restart(km)

    async def _restart(self, km: GatewayKernel) -> GatewayKernel:
        km.restarting = True
        km.execution_state = "restarting"
        km.notify("restarting")
        before = km.get_connection_info()
        old_gone = await self._process_exit_watch(km)
        try:
            await km.restart_kernel(now=False)
            await old_gone  # the old kernel process let go of its sockets: no stale reply possible
            if km.get_connection_info()["ip"] != before["ip"]:
                km.generation += 1
                self._watch(km)
                km.notify("moved")
            await self.wait_ready(km)
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
        if km.persisted:
            self._store_tasks.spawn(self.persist(km))
        return km

    async def _process_exit_watch(self, km: GatewayKernel, timeout: float = 10.0) -> "asyncio.Future[None]":
        """A future that resolves when the current kernel process drops its ZMQ connections.

        A restart must not be reported ready by the old process: it still answers kernel_info
        while it shuts down. A socket monitor tells, without polling, when its TCP connection
        closes. If no kernel process is connected (a dead container) it resolves at once.
        """
        ctx = zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        sock.connect(zmq_url(km.get_connection_info(), "control"))

        async def next_event(wait: float) -> int | None:
            if not await monitor.poll(wait * 1000):
                return None
            return int(parse_monitor_message(await monitor.recv_multipart())["event"])

        async def watch() -> None:
            try:
                await asyncio.wait_for(self._until(next_event, zmq.EVENT_DISCONNECTED, timeout), timeout)
            except asyncio.TimeoutError:
                self.log.warning("Kernel %s: old process did not let go within %ss", km.kernel_id, timeout)
            finally:
                sock.disable_monitor()
                monitor.close(0)
                sock.close(0)

        connected = await next_event(0.5 if km.execution_state != "dead" else 0.0)
        if connected != zmq.EVENT_HANDSHAKE_SUCCEEDED:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return asyncio.ensure_future(watch())

    @staticmethod
    async def _until(next_event: Callable[[float], Any], event: int, timeout: float) -> None:
        while await next_event(timeout) not in (event, None):
            pass

    async def interrupt(self, kernel_id: str, owner: str | None = None) -> None:
        km = self.get(kernel_id, owner)
        if km.execution_state == "dead":
            raise KernelDead("kernel is dead; restart it first")
        if km.restarting or km.stopping:
            # A signal now would reach a kernel process before it can handle it.
            raise KernelDead("kernel is restarting or shutting down", status=409)
        await km.interrupt_kernel()

    async def shutdown(self, kernel_id: str, owner: str | None = None, now: bool = False) -> None:
        """Stop a kernel. Concurrent calls for the same kernel wait for the first one."""
        km = self.get(kernel_id, owner)
        km.stopping = True
        async with km.lifecycle:  # waits for a restart in flight, or for another shutdown
            if self._kernels.get(kernel_id) is not km:
                return  # another caller finished it
            await self._shutdown(km, now)

    async def _shutdown(self, km: GatewayKernel, now: bool) -> None:
        kernel_id = km.kernel_id
        self._unwatch(km)
        km.notify("shutdown")
        if km._runner is not None:
            km._runner.close()
        try:
            await km.shutdown_kernel(now=now or km.execution_state == "dead")
        finally:
            self._removed(kernel_id)
            self.log.info("Kernel shut down: %s", kernel_id)

    async def shutdown_everything(self, keep: bool = False) -> None:
        """Gateway exit. Pooled and starting kernels always go; the others stop too unless
        `keep`, when their containers and records stay for the next process to adopt."""
        self._closing = True
        await self.deadlines.close()
        await self._autorestart_tasks.wait()
        # Refills in flight are creating containers: let them land, then remove them too.
        kms = await self.pool.drain()
        kms += list(self._starting.values())
        if keep:
            for km in list(self._kernels.values()):
                self._unwatch(km)  # type: ignore[arg-type]
                if km._runner is not None:  # type: ignore[attr-defined]
                    km._runner.close()  # type: ignore[attr-defined]
                if not km.persisted:  # type: ignore[attr-defined]
                    kms.append(km)  # a local process cannot be adopted: stop it
        else:
            kms += list(self._kernels.values())
        for km in kms:
            self._unwatch(km)  # type: ignore[arg-type]
        results = await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kms), return_exceptions=True)
        for km, res in zip(kms, results):
            if isinstance(res, BaseException):
                self.log.warning("Kernel %s did not shut down cleanly: %s", km.kernel_id, res)
            self._removed(km.kernel_id)
        await self.flush_store()
