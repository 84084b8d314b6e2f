"""The kernel store.

`GatewayKernel` is a jupyter_client `AsyncKernelManager` that also knows its owner, activity and
state; `GatewayKernelManager` is a jupyter_client `AsyncMultiKernelManager` that starts kernels
for an owner, waits until they answer, never keeps a half-started one, and tells listeners (the
websockets) when a kernel dies, restarts or moves.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from jupyter_client.provisioning import KernelProvisionerFactory
from jupyter_client.session import Session
from traitlets import Bool, Dict, Float, Instance, Int, List, Unicode
from zmq.eventloop.zmqstream import ZMQStream

from ..config import apply_env, env
from ..errors import (
    BadRequest,
    GatewayError,
    KernelDead,
    KernelNotFound,
    KernelSpecNotFound,
    KernelStartFailed,
    LimitExceeded,
    OverCapacity,
    TooManyKernels,
)
from ..provisioners.docker import (
    LAUNCH_LABELS,
    LAUNCH_LIMITS,
    LAUNCH_MOUNTS,
    LAUNCH_OWNER,
    LAUNCH_USER_ENV,
    DockerProvisioner,
)
from ..provisioners.engine import LABEL_KIND, DockerEngine
from ..provisioners.limits import KernelLimits, parse_memory
from ..store import Store
from .culling import Deadlines
from .execution import Runner
from .specs import GatewayKernelSpecManager

DOCKER_PROVISIONER = "docker-provisioner"
RECORD_KIND = "kernel"  # the store's record kind for kernels
MIN_MEMORY = 6 * 2**20  # Docker refuses a smaller memory limit
WARM_UP_CODE = {"python": "pass", "bash": "true"}  # what a pooled kernel runs once before it is handed out
# Requests whose status messages do not make a kernel "busy" for clients and culling.
UNTRACKED_PARENTS = {"kernel_info_request", "comm_info_request", "shutdown_request", "interrupt_request"}
# What a local (fallback) kernel process gets from the gateway's environment.
LOCAL_BASE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")

# A listener may return an awaitable; `notify_and_wait` waits for them (a restart is not
# answered before every open websocket is subscribed to the new kernel's output again).
Listener = Callable[[str, dict[str, Any]], Any]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def isoformat(dt: datetime) -> str:
    """The exact format jupyter_server's GatewayClient parses: %Y-%m-%dT%H:%M:%S.%fZ."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def zmq_url(info: dict[str, Any], channel: str) -> str:
    return f"{info['transport']}://{info['ip']}:{info[channel + '_port']}"


# Reconnect quickly to a restarted kernel (ZMQ's default waits 100 ms), backing off when it is gone.
RECONNECT_IVL_MS, RECONNECT_IVL_MAX_MS = 20, 1000


def kernel_stream(km: "GatewayKernel", channel: str, identity: bytes | None = None) -> ZMQStream:
    """A ZMQStream on the IOLoop to one of the kernel's channels (iopub: subscribed to all).

    ZMQStreams, not zmq.asyncio recv futures: with sends on the same socket from elsewhere, a
    pending asyncio recv can miss its edge-triggered wake-up and never see a reply."""
    sock = zmq.Context.instance().socket(zmq.SUB if channel == "iopub" else zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    if channel == "iopub":
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    elif identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)  # stdin replies route to the shell sender's identity
    sock.connect(zmq_url(km.get_connection_info(), channel))
    return ZMQStream(sock)


class GatewayKernel(AsyncKernelManager):
    """One kernel of the store."""

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
        self.generation = 0  # bumped when the kernel's address changes; sockets reconnect
        self._listeners: set[Listener] = set()
        self._activity_stream: ZMQStream | None = None
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
        }

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

    def model(self) -> dict[str, Any]:
        return {
            "id": self.kernel_id,
            "name": self.kernel_name,
            "last_activity": isoformat(self.last_activity),
            "execution_state": self.execution_state,
            "connections": self.connections,
            **({"reason": self.reason} if self.reason else {}),
        }

    def touch(self) -> None:
        self.last_activity = utcnow()


class GatewayKernelManager(AsyncMultiKernelManager):
    """Kernels with owners; every dialect goes through here."""

    kernel_manager_class = Unicode("kernel_gateway_ext.kernels.manager.GatewayKernel").tag(config=True)
    kernel_spec_manager = Instance(GatewayKernelSpecManager)
    ready_timeout = env(
        Float(60.0, help="Seconds a new kernel may take to answer kernel_info."), "KGE_KERNEL_READY_TIMEOUT"
    )
    max_kernels = env(Int(0, help="Most kernels at once, pooled ones included (0: no limit)."), "KGE_MAX_KERNELS")
    max_kernels_per_owner = env(Int(0, help="Most kernels one owner may have at once (0: no limit)."),
                                "KGE_MAX_KERNELS_PER_OWNER")
    memory_budget = env(
        Unicode("", help="Memory all kernels and Skaha sessions together may be promised (their container limits), "
                         "e.g. '48g' or '90%' of the host; a start beyond it answers 429. Empty: no budget "
                         "(limits are caps, and callers such as the CANFAR clients ask generously)."),
        "KGE_MEMORY_BUDGET",
    )
    env_allowlist = env(
        List(Unicode(), help="Request env names passed to kernels besides KERNEL_*."), "KGE_ENV_ALLOWLIST"
    )
    hard_mem_limit = env(Unicode("8g", help="Most memory one kernel may ask for (more: 406)."), "KGE_HARD_MEM_LIMIT")
    hard_cpu_limit = env(Float(float(os.cpu_count() or 1), help="Most CPUs one kernel may ask for."), "KGE_HARD_CPU_LIMIT")
    hard_gpu_limit = env(Int(0, help="Most GPUs one kernel may ask for (0: this host offers none)."), "KGE_HARD_GPU_LIMIT")
    hard_exec_timeout = env(
        Float(3600.0, help="Longest execTimeout (s) a caller may set; also the default when none is set."),
        "KGE_HARD_EXEC_TIMEOUT",
    )
    pool_sizes = env(
        Dict(value_trait=Int(), help="Ready kernels kept per kernelspec, handed to starts that they can serve "
             "exactly (e.g. --GatewayKernelManager.pool_sizes python3=4; env: JSON)."),
        "KGE_POOL_SIZES",
    )
    pool_concurrency = env(Int(2, help="Pool kernels started at once while refilling."), "KGE_POOL_CONCURRENCY")
    cull_idle_timeout = env(
        Float(0.0, help="Shut kernels down after this many seconds without activity (0: never), as "
                        "jupyter_server's MappingKernelManager.cull_idle_timeout."),
        "KGE_CULL_IDLE_TIMEOUT",
    )
    cull_busy = env(Bool(False, help="Cull busy kernels too (an execution that runs longer than the timeout)."),
                    "KGE_CULL_BUSY")
    cull_connected = env(Bool(False, help="Cull kernels that still have an open websocket."), "KGE_CULL_CONNECTED")
    run_flush_interval = env(
        Float(3.0, help="Seconds a REST execute waits before answering 'continued'."), "KGE_RUN_FLUSH_INTERVAL"
    )
    lang_aliases = Dict(
        {"python": "python3", "python3": "python3", "python:3": "python3", "python:3.6": "python3",
         "python:latest": "python3", "lablup/kernel-python:3.6-debian": "python3", "lablup/python:3.6-ubuntu18.04": "python3",
         "bash": "bash", "shell": "bash", "sh": "bash"},
        help="Languages and image names REST callers may name, mapped to kernelspecs.",
    ).tag(config=True)

    store = Instance(Store, allow_none=True, help="Where kernel records outlive the process (set by the app).")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        apply_env(self, set(kwargs))
        # Set by the app: (purpose, nonce) -> a secret derived from the master key.
        self.derive_secret: Callable[[str, str], str] | None = None
        self._store_tasks: set[asyncio.Future[Any]] = set()
        self._default_mem_limit: str | None = None
        self.deadlines = Deadlines(self.log)
        self._starting: dict[str, GatewayKernel] = {}
        # (owner, token) -> [lock, users]: get-or-create is serialized per token, and an entry is
        # dropped when nobody holds or awaits it (tokens are often random: unbounded otherwise).
        self._token_locks: dict[tuple[str, str], list[Any]] = {}
        self._pool: dict[str, list[GatewayKernel]] = {}
        self._pool_filling: dict[str, int] = {}
        self._pool_sem: asyncio.Semaphore | None = None
        self._fill_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.pool_hits = 0
        self.pool_misses = 0
        self._removal_callbacks: list[Callable[[str], None]] = []

    def on_removal(self, callback: Callable[[str], None]) -> None:
        """Call `callback(kernel_id)` whenever a kernel leaves the store."""
        self._removal_callbacks.append(callback)

    def _removed(self, kernel_id: str) -> None:
        self.deadlines.cancel(kernel_id)
        km = self._kernels.pop(kernel_id, None)
        if km is not None and getattr(km, "persisted", False) and self.store is not None:
            self._store_task(self.store.delete_record(RECORD_KIND, kernel_id))
        for cb in self._removal_callbacks:
            cb(kernel_id)

    # ---- persistence: records in the store, adoption after a restart ----------------------------
    def _store_task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._store_tasks.add(task)
        task.add_done_callback(self._store_tasks.discard)

    async def persist(self, km: GatewayKernel) -> None:
        """Write (or update) the kernel's record; only container kernels can be adopted."""
        if self.store is None or km.docker is None or km.kernel_id not in self._kernels:
            return
        await self.store.put_record(RECORD_KIND, km.kernel_id, DockerEngine.instance().gateway_id, km.owner, km.record())
        km.persisted = True

    async def flush_store(self) -> None:
        """Wait for record writes and deletions in flight."""
        while self._store_tasks:
            await asyncio.gather(*list(self._store_tasks), return_exceptions=True)

    def _derive_key(self, km: GatewayKernel, kernel_id: str) -> None:
        if self.derive_secret is None:
            return
        km.key_nonce = km.key_nonce or secrets.token_hex(16)
        km.session.key = self.derive_secret(f"kernel:{kernel_id}", km.key_nonce).encode()

    async def adopt(self, containers: list[Any]) -> set[str]:
        """Take over the kernels an earlier process of this gateway id left running (kill -9,
        or a stop with keep_on_exit): same id, owner, key and state. Returns the container ids
        adopted; records whose container is gone are dropped."""
        if self.store is None:
            return set()
        gateway = DockerEngine.instance().gateway_id
        by_id = {c.id: c for c in containers if c.labels.get(LABEL_KIND) == "kernel"}
        adopted: set[str] = set()
        for rec in await self.store.records(RECORD_KIND, gateway):
            container = by_id.get(rec.get("container_id") or "")
            if container is None:
                self.log.warning("Kernel %s: its container is gone; dropping its record", rec["id"])
                await self.store.delete_record(RECORD_KIND, rec["id"])
                continue
            try:
                km = await self._adopt_one(rec, container.id)
            except Exception as e:  # noqa: BLE001 - one broken record must not stop the gateway
                self.log.warning("Kernel %s could not be adopted (%s); removing it", rec["id"], e)
                self._kernels.pop(rec["id"], None)
                await self.store.delete_record(RECORD_KIND, rec["id"])
                continue
            adopted.add(container.id)
            self.arm_cull(km)
            self.log.info("Kernel adopted: %s (%s) of %s, %s", km.kernel_id, km.kernel_name, km.owner, km.execution_state)
        return adopted

    async def _adopt_one(self, rec: dict[str, Any], container_id: str) -> GatewayKernel:
        kernel_id, name = rec["id"], rec["kernel_name"]
        km, name, _ = self.pre_start_kernel(name, {"kernel_id": kernel_id})
        assert isinstance(km, GatewayKernel)
        km.kernel_id = kernel_id
        km.owner = rec["owner"]
        km.lang = rec.get("lang") or name
        km.client_token = rec.get("client_token")
        km.limits = KernelLimits(**(rec.get("limits") or {}))
        km.exec_timeout = rec.get("exec_timeout")
        km.idle_timeout = rec.get("idle_timeout")
        km.created = datetime.fromtimestamp(float(rec.get("created") or time.time()), timezone.utc)
        km.restart_count = int(rec.get("restart_count") or 0)
        km.key_nonce = rec["key_nonce"]
        km._attempted_start = True  # started, by an earlier process: restarts then make fresh futures
        self._derive_key(km, kernel_id)
        # What a restart re-runs start_kernel with (the container stays; these are not re-applied).
        km._launch_args = self._launch_kwargs(name, owner=km.owner, env_=None, limits=km.limits, mounts=None,
                                              labels=None)
        km.provisioner = KernelProvisionerFactory.instance(parent=self.parent).create_provisioner_instance(
            kernel_id, km.kernel_spec, parent=km)
        prov = km.docker
        if prov is None:
            raise KernelStartFailed(f"kernelspec {name!r} no longer runs in containers")
        await prov.load_provisioner_info({"container_id": container_id, "owner": km.owner})
        km.load_connection_info(prov.connection_info)
        km.persisted = True
        self._kernels[kernel_id] = km
        if await prov.poll() is None:
            try:
                await self.wait_ready(km, timeout=10.0)
                km.execution_state = "idle"
            except KernelStartFailed as e:
                km.execution_state, km.reason = "dead", f"did not answer after the gateway restarted: {e}"
        else:
            km.execution_state = "dead"
            km.reason = "killed: out of memory" if prov.oom_killed else f"exited with code {await prov.poll()}"
        self._watch(km)
        return km

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
    def _launch_kwargs(
        self,
        kernel_name: str,
        *,
        owner: str,
        env_: dict[str, Any] | None,
        limits: KernelLimits | None,
        mounts: list[dict[str, Any]] | None,
        labels: dict[str, str] | None,
        user_env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        spec = self.kernel_spec_manager.get_kernel_spec(kernel_name)
        allowed = set(self.env_allowlist)
        requested = {k: str(v) for k, v in (env_ or {}).items() if k.startswith("KERNEL_") or k in allowed}
        provisioner = (spec.metadata.get("kernel_provisioner") or {}).get("provisioner_name")
        if provisioner == DOCKER_PROVISIONER:
            return {
                "env": requested,
                LAUNCH_OWNER: owner,
                LAUNCH_LIMITS: limits or KernelLimits(),
                LAUNCH_MOUNTS: mounts or [],
                LAUNCH_LABELS: labels or {},
                LAUNCH_USER_ENV: user_env or {},
            }
        # A local process: the minimum it needs to run, never the gateway's secrets.
        base = {k: os.environ[k] for k in LOCAL_BASE_ENV if k in os.environ}
        return {"env": {**base, **requested, **(user_env or {})}}

    async def start(
        self,
        *,
        owner: str,
        kernel_name: str | None = None,
        env: dict[str, Any] | None = None,
        limits: KernelLimits | None = None,
        mounts: list[dict[str, Any]] | None = None,
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
        name = kernel_name or self.kernel_spec_manager.default_name
        self.check_limits(limits, exec_timeout)
        if self.max_kernels_per_owner and len(self.list(owner)) + self._starting_for(owner) >= self.max_kernels_per_owner:
            self._observe("rejected", name, "owner_max")
            raise TooManyKernels(f"{owner} already has the maximum of {self.max_kernels_per_owner} kernels")
        began = time.monotonic()
        km = await self._take_pooled(name, env, limits, mounts, labels, user_env)
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
                km = await self._launch(name, owner=owner, env=env, limits=limits, mounts=mounts, labels=labels,
                                        user_env=user_env)
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

    # Set by the app: called as observe(event, kernelspec, source, seconds) for metrics.
    observer: Callable[..., None] | None = None

    def _observe(self, *args: Any) -> None:
        if self.observer is not None:
            self.observer(*args)

    def _starting_for(self, owner: str) -> int:
        return sum(1 for km in self._starting.values() if km.owner == owner)

    # ---- the host's memory budget -----------------------------------------------------------------
    # Set by the app: the memory promised to things outside this manager (Skaha sessions).
    other_memory: Callable[[], int] = staticmethod(lambda: 0)  # type: ignore[assignment]

    def budget_bytes(self) -> int:
        """The memory budget in bytes (0: none)."""
        text = self.memory_budget.strip()
        if not text:
            return 0
        if text.endswith("%"):
            try:
                host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            except (ValueError, OSError):
                return 0
            return int(host * float(text[:-1]) / 100)
        return parse_memory(text)

    def memory_of(self, name: str, limits: KernelLimits | None) -> int:
        """The memory a kernel of `name` with `limits` is promised (its container's limit)."""
        if limits is not None and limits.memory_bytes:
            return limits.memory_bytes
        try:
            spec = self.kernel_spec_manager.get_kernel_spec(name)
        except Exception:  # noqa: BLE001 - an unknown spec fails later with its own error
            return 0
        prov = (spec.metadata.get("kernel_provisioner") or {})
        if prov.get("provisioner_name") != DOCKER_PROVISIONER:
            return 0
        configured = (prov.get("config") or {}).get("mem_limit")
        if not configured:
            if self._default_mem_limit is None:  # the provisioners' configured default (traits, env)
                self._default_mem_limit = DockerProvisioner(parent=self).mem_limit
            configured = self._default_mem_limit
        return parse_memory(configured)

    def promised_memory(self) -> int:
        kms = list(self._kernels.values()) + list(self._starting.values()) + [k for v in self._pool.values() for k in v]
        total = 0
        for km in kms:
            prov = km.docker  # type: ignore[attr-defined]
            if prov is not None:
                total += prov.limits.memory_bytes or parse_memory(prov.mem_limit)
        return total + self.other_memory()

    def check_capacity(self, wanted: int) -> None:
        """429 when `wanted` more bytes would promise more memory than the host's budget."""
        budget = self.budget_bytes()
        if budget and wanted and self.promised_memory() + wanted > budget:
            gib = 2**30
            raise OverCapacity(f"the host's memory budget is spent: {self.promised_memory() / gib:.1f} GiB of "
                               f"{budget / gib:.1f} GiB promised, {wanted / gib:.1f} GiB more asked")

    def _count(self) -> int:
        return len(self._kernels) + len(self._starting) + sum(len(v) for v in self._pool.values())

    async def _launch(self, name: str, *, owner: str, env: dict[str, Any] | None = None,
                      limits: KernelLimits | None = None, mounts: list[dict[str, Any]] | None = None,
                      labels: dict[str, str] | None = None, user_env: dict[str, str] | None = None) -> GatewayKernel:
        """A new kernel, answering kernel_info, not yet in the store; nothing left on failure."""
        kwargs = self._launch_kwargs(name, owner=owner, env_=env, limits=limits, mounts=mounts, labels=labels,
                                     user_env=user_env)
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

    # ---- the warm pool ------------------------------------------------------------------------
    def fill_pools(self) -> None:
        """Start what each pool lacks, in the background, within max_kernels."""
        if self._closing:
            return
        if self._pool_sem is None:
            self._pool_sem = asyncio.Semaphore(max(1, self.pool_concurrency))
        for name, size in self.pool_sizes.items():
            missing = size - len(self._pool.get(name, [])) - self._pool_filling.get(name, 0)
            for _ in range(max(0, missing)):
                if self.max_kernels and self._count() + sum(self._pool_filling.values()) >= self.max_kernels:
                    return
                budget = self.budget_bytes()
                if budget and self.promised_memory() + (sum(self._pool_filling.values()) + 1) * self.memory_of(name, None) > budget:
                    return
                self._pool_filling[name] = self._pool_filling.get(name, 0) + 1
                task = asyncio.ensure_future(self._fill_one(name))
                self._fill_tasks.add(task)
                task.add_done_callback(self._fill_tasks.discard)

    async def _fill_one(self, name: str) -> None:
        assert self._pool_sem is not None
        try:
            async with self._pool_sem:
                km = await self._launch(name, owner="")
                # One quiet execution warms the kernel's execute path: the caller's first
                # execute then answers as fast as any later one.
                language = (self.kernel_spec_manager.get_kernel_spec(name).language or "").lower()
                warm_up = WARM_UP_CODE.get(language.split()[0] if language else "")
                if warm_up is not None:
                    try:
                        await self._execute_quietly(km, warm_up)
                    except BaseException:
                        await self._discard(km)
                        raise
        except Exception as e:  # noqa: BLE001 - a failing pool must not take the gateway down
            self.log.warning("Pool %s: a kernel failed to start (%s); retrying in 10 s", name, e)
            asyncio.get_running_loop().call_later(10.0, self.fill_pools)
            return
        finally:
            self._pool_filling[name] = self._pool_filling.get(name, 1) - 1
        km.execution_state = "idle"
        if km.docker is not None:
            km.docker.exit_callback = lambda code, k=km: self._pooled_died(name, k)
        self._pool.setdefault(name, []).append(km)

    def _pooled_died(self, name: str, km: GatewayKernel) -> None:
        if km in self._pool.get(name, []):
            self._pool[name].remove(km)
            asyncio.ensure_future(self._discard(km))
            self.fill_pools()

    async def _take_pooled(self, name: str, env: dict[str, Any] | None, limits: KernelLimits | None,
                           mounts: list[dict[str, Any]] | None, labels: dict[str, str] | None,
                           user_env: dict[str, str] | None) -> GatewayKernel | None:
        """A ready kernel made exactly what was asked, or None (then the start is cold)."""
        ready = self._pool.get(name)
        if not ready:
            if name in self.pool_sizes:
                self.pool_misses += 1
            return None
        # Mounts, limits and labels are fixed when a container is made: only defaults pool.
        if mounts or labels or (limits is not None and limits != KernelLimits()):
            self.pool_misses += 1
            return None
        allowed = set(self.env_allowlist)
        wanted = {k: str(v) for k, v in (env or {}).items() if k.startswith("KERNEL_") or k in allowed}
        wanted.update(user_env or {})
        spec = self.kernel_spec_manager.get_kernel_spec(name)
        if wanted and not (spec.language or "").lower().startswith("python"):
            self.pool_misses += 1
            return None
        km = ready.pop(0)
        self.fill_pools()
        if not await km.is_alive():
            await self._discard(km)
            self.pool_misses += 1
            return None
        if wanted:
            try:
                await self._apply_env(km, wanted)
            except Exception as e:  # noqa: BLE001 - never hand out a kernel that differs
                self.log.warning("Pool %s: could not set the env of a pooled kernel (%s)", name, e)
                await self._discard(km)
                self.pool_misses += 1
                return None
        if km.docker is not None:
            km.docker.exit_callback = None  # _watch sets the store's own
        self.pool_hits += 1
        return km

    async def _apply_env(self, km: GatewayKernel, wanted: dict[str, str]) -> None:
        """Give a pooled Python kernel the requested environment: os.environ (and so every
        subprocess it starts) holds exactly what a cold start would have had."""
        import json as _json

        await self._execute_quietly(km, f"import os as _o; _o.environ.update({_json.dumps(wanted)}); del _o")

    async def _execute_quietly(self, km: GatewayKernel, code: str, timeout: float = 10.0) -> None:
        """Run `code` on the kernel's shell (no history, no output anyone sees); raise unless ok."""
        session = Session(key=km.session.key, signature_scheme=km.session.signature_scheme)
        sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(zmq_url(km.get_connection_info(), "shell"))
        try:
            msg = session.msg("execute_request", {"code": code, "silent": False, "store_history": False,
                                                  "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
            session.send(sock, msg)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                if not await sock.poll(left * 1000):
                    break
                _, fed = session.feed_identities(await sock.recv_multipart())
                reply = session.deserialize(fed)
                if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                    if reply["content"].get("status") != "ok":
                        raise KernelStartFailed("the pooled kernel could not run its set-up code")
                    return
            raise KernelStartFailed("the pooled kernel did not answer")
        finally:
            sock.close(0)

    # ---- REST callers: limits, languages, get-or-create by client token ------------------------
    def check_limits(self, limits: KernelLimits | None, exec_timeout: float | None) -> None:
        """Requests above the server's hard limits are refused (406), nothing is started."""
        if limits is not None:
            if limits.memory_bytes and limits.memory_bytes < MIN_MEMORY:
                raise BadRequest(f"memory below the engine's minimum of {MIN_MEMORY // 2**20} MiB")
            if limits.memory_bytes and limits.memory_bytes > parse_memory(self.hard_mem_limit):
                raise LimitExceeded(f"memory above this server's limit of {self.hard_mem_limit}")
            if limits.cpus and limits.cpus > self.hard_cpu_limit:
                raise LimitExceeded(f"CPUs above this server's limit of {self.hard_cpu_limit:g}")
            if limits.gpus and limits.gpus > self.hard_gpu_limit:
                raise LimitExceeded(f"GPUs above this server's limit of {self.hard_gpu_limit}")
        if exec_timeout is not None and exec_timeout > self.hard_exec_timeout:
            raise LimitExceeded(f"execTimeout above this server's limit of {self.hard_exec_timeout:g} s")

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

    # ---- activity and death -------------------------------------------------------------------
    def _watch(self, km: GatewayKernel) -> None:
        self._unwatch(km)
        stream = kernel_stream(km, "iopub")
        session = Session(key=km.session.key, signature_scheme=km.session.signature_scheme)

        def on_iopub(parts: list[bytes]) -> None:
            km.touch()
            try:
                _, fed = session.feed_identities(parts)
                msg = session.deserialize(fed, content=False)
            except Exception:  # noqa: BLE001 - a bad message is not our problem here
                return
            if msg["header"]["msg_type"] != "status":
                return
            parent_type = (msg.get("parent_header") or {}).get("msg_type")
            if parent_type in UNTRACKED_PARENTS or km.restarting:
                return
            content = session.unpack(msg["content"])
            state = content.get("execution_state")
            if state in ("busy", "idle"):
                km.execution_state = state

        stream.on_recv(on_iopub)
        km._activity_stream = stream
        prov = km.docker
        if prov is not None:
            prov.exit_callback = lambda code: self._on_container_exit(km, code)

    def _unwatch(self, km: GatewayKernel) -> None:
        if km._activity_stream is not None:
            km._activity_stream.close()
            km._activity_stream = None

    def _on_container_exit(self, km: GatewayKernel, code: int | None) -> None:
        if km.shutting_down or km.restarting or km.kernel_id not in self._kernels:
            return
        prov = km.docker
        km.execution_state = "dead"
        km.reason = "killed: out of memory" if prov is not None and prov.oom_killed else f"exited with code {code}"
        self.log.warning("Kernel %s died: %s", km.kernel_id, km.reason)
        km.notify("dead", reason=km.reason)

    # ---- giving resources back: idle culling -------------------------------------------------------
    def idle_timeout_of(self, km: GatewayKernel) -> float:
        """The caller's own timeout (v2 idleTimeout), never longer than the server's."""
        server = self.cull_idle_timeout
        if km.idle_timeout:
            return min(km.idle_timeout, server) if server > 0 else km.idle_timeout
        return server

    def arm_cull(self, km: GatewayKernel, at: float | None = None) -> None:
        """(Re)arm the kernel's idle deadline: last activity + its timeout."""
        timeout = self.idle_timeout_of(km)
        if timeout <= 0 or self._closing:
            self.deadlines.cancel(km.kernel_id)
            return
        when = at if at is not None else km.last_activity.timestamp() + timeout
        self.deadlines.arm(km.kernel_id, when, lambda: self._cull_if_idle(km.kernel_id))

    async def _cull_if_idle(self, kernel_id: str) -> None:
        km = self._kernels.get(kernel_id)
        if km is None:
            return
        assert isinstance(km, GatewayKernel)
        timeout = self.idle_timeout_of(km)
        if timeout <= 0:
            return
        now = time.time()
        idle_for = now - km.last_activity.timestamp()
        if idle_for < timeout:
            self.arm_cull(km)  # there was activity since: the deadline moved
            return
        if km.execution_state == "busy" and not self.cull_busy:
            self.arm_cull(km, at=now + timeout)
            return
        if km.connections and not self.cull_connected:
            self.arm_cull(km, at=now + timeout)
            return
        self.log.warning("Culling kernel %s (%s) of %s: idle for %.0f s (timeout %.0f s)",
                         km.kernel_id, km.kernel_name, km.owner, idle_for, timeout)
        self._observe("cull", km.kernel_name, "idle")
        await self.shutdown(kernel_id, now=True)

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
            self._store_task(self.persist(km))
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
        # Refills in flight are creating containers: let them land, then remove them too.
        await asyncio.gather(*list(self._fill_tasks), return_exceptions=True)
        kms = list(self._starting.values())
        for pooled in self._pool.values():
            kms += pooled
        self._pool.clear()
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
