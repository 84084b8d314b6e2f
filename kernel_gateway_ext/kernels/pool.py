"""Warm pools: ready kernels per kernelspec, refilled in the background within the limits, and
specialised at hand-out into exactly what the start asked: its limits applied to the running
container, its folders bound in at their targets, its env set in the live kernel and kept for the
kernel's restarts (provisioners/docker.py `specialise`). What cannot be made exact (GPUs, env the
interpreter reads only at start-up, env for a language we cannot set it in) starts cold, never differs.

`WarmPool` is a collaborator of the kernel store, wired in its constructor; what it needs of the store
is the `PoolHost` protocol (launch, discard), nothing of its private state; whether there is room for
one more kernel is the capacity's to say (`Room`)."""
from __future__ import annotations

import asyncio
import json
import re
import shlex
import time

import zmq
import zmq.asyncio
from jupyter_client.session import Session
from typing import Any, Protocol

from traitlets import Bool, Dict, Float, HasTraits, Int

from ..config import env
from ..containers import current_backend
from ..containers.limits import KernelLimits
from ..errors import GatewayError, KernelStartFailed
from ..provisioners.docker import ENV_FILE
from ..provisioners.launch import LaunchRequest
from .channels import zmq_url
from .iopub import hub_of
from ..tasks import TaskSet, gather_all
from .kernel import GatewayKernel
from .pool_sizing import PoolSizer

JOIN_TIMEOUT = 120.0  # s a start waits for a refill under way (it ends sooner: ready, or failed)
TRIM_AFTER = 60.0  # s a pool stays over its target before its extra kernels are stopped
REFILL_DEFER = 0.05  # s a refill waits while its pool still has ready kernels (_refill_soon)

WARM_UP_CODE = {"python": "pass", "bash": "true"}  # what a pooled kernel runs once before it is handed out
WARM_UP_TIMEOUT = 10.0  # s for the warm-up, and for its output subscription to be live
# Read by the interpreter, the loader or libc when a process starts, so setting them in a running
# kernel would not be what a cold start gives: a request naming one starts cold.
STARTUP_ENV = re.compile(r"^(PYTHON|LD_|LC_|LANG$|LANGUAGE$|MALLOC_|GLIBC_)")
SHELL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def set_env_code(language: str, env: dict[str, str]) -> str | None:
    """Code that sets `env` in a running kernel of `language` (and so in every process it starts)
    and writes it to the nanny's env file for the container's later kernel processes (restarts);
    None when it cannot be done exactly. Run once, at hand-out, before any code of the caller's."""
    if not env:
        return ""
    if any(STARTUP_ENV.match(k) for k in env):
        return None
    data = json.dumps(env)
    if language == "python":
        return (f"import os as _o, json as _j; _o.environ.update(_j.loads({data!r})); "
                f"_f = _o.open({ENV_FILE!r}, _o.O_WRONLY | _o.O_CREAT | _o.O_EXCL | _o.O_NOFOLLOW, 0o400); "
                f"_o.write(_f, {data!r}.encode()); _o.close(_f); del _o, _j, _f")
    if language == "bash" and all(SHELL_NAME.match(k) and "\0" not in v for k, v in env.items()):
        return ("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
                + f"; (set -C; umask 0377; printf '%s' {shlex.quote(data)} > {ENV_FILE})")
    return None


class PoolSettings(HasTraits):
    """The pool's options (traits of the kernel store: GatewayKernelManager.pool_sizes, …)."""

    pool_sizes = env(
        Dict(value_trait=Int(), help="Ready kernels kept per kernelspec, handed to starts that they can serve "
             "exactly (e.g. --GatewayKernelManager.pool_sizes python3=4; env: JSON)."),
        "KGE_POOL_SIZES",
    )
    pool_max_sizes = env(
        Dict(value_trait=Int(), help="Most ready kernels per kernelspec when its pool sizes itself from the recent "
             "start rate (pool_sizes is then the least; a kernelspec missing here keeps its pool_sizes; env: JSON)."),
        "KGE_POOL_MAX_SIZES",
    )
    pool_budget_share = env(
        Float(0.25, help="Share of the memory budget that ready (pooled) kernels may be promised together when "
                         "a pool grows above its pool_sizes: the rest stays there for kernels people asked for."),
        "KGE_POOL_BUDGET_SHARE",
    )
    pool_concurrency = env(Int(2, help="Pool kernels started at once while refilling."), "KGE_POOL_CONCURRENCY")
    pool_specialise = env(
        Bool(True, help="Hand pooled kernels to starts with their own limits, folders and env, applied to the "
                        "running container (folders need root and Linux 5.12+; otherwise such starts are cold)."),
        "KGE_POOL_SPECIALISE",
    )


class PoolHost(Protocol):
    """What the pool needs of the kernel store."""

    log: Any
    kernel_spec_manager: Any
    pool_sizes: dict[str, int]
    pool_max_sizes: dict[str, int]
    pool_budget_share: float
    pool_concurrency: int
    pool_specialise: bool

    @property
    def closing(self) -> bool: ...

    async def launch(self, request: LaunchRequest) -> GatewayKernel: ...

    async def discard(self, km: GatewayKernel) -> None: ...


class Room(Protocol):
    def room_for_pooled(self, name: str, filling: int) -> bool: ...

    def budget_bytes(self) -> int: ...

    def memory_of(self, name: str, limits: KernelLimits | None) -> int: ...


class WarmPool:
    def __init__(self, host: PoolHost, room: Room) -> None:
        self.host = host
        self.room = room
        self.ready: dict[str, list[GatewayKernel]] = {}
        self.filling: dict[str, int] = {}
        self.hits = 0
        self.misses = 0
        self._sem: asyncio.Semaphore | None = None
        self._fill_tasks = TaskSet(host.log, "pool refill")
        self._no_mounts: str | None = None  # why folders cannot be bound into running containers here
        self._languages: dict[str, str] = {}  # kernelspec -> its first language word
        self._mount_failures = 0
        self.sizer = PoolSizer()
        self._trim_timer: asyncio.TimerHandle | None = None
        self._refill_timer: asyncio.TimerHandle | None = None
        # Refills under way (past the concurrency gate), and starts waiting for one of them.
        self.launching: dict[str, int] = {}
        self._waiters: dict[str, list[asyncio.Future[GatewayKernel | None]]] = {}

    # ---- what the store asks ----------------------------------------------------------------
    def kernels(self) -> list[GatewayKernel]:
        return [km for ready in self.ready.values() for km in ready]

    def count(self) -> int:
        return sum(len(v) for v in self.ready.values())

    async def drain(self) -> list[GatewayKernel]:
        """Gateway exit: wait for refills in flight, then hand every ready kernel back to be stopped."""
        for timer in (self._trim_timer, self._refill_timer):
            if timer is not None:
                timer.cancel()
        self._trim_timer = self._refill_timer = None
        for waiters in self._waiters.values():  # the kernels under way are stopped with the pool
            while waiters:
                waiter = waiters.pop()
                if not waiter.done():
                    waiter.set_result(None)
        await self._fill_tasks.wait()
        kms = self.kernels()
        self.ready.clear()
        return kms

    def bounds(self, name: str) -> tuple[int, int]:
        """(least, most) ready kernels of `name` (0, 0: no pool)."""
        floor = max(0, self.host.pool_sizes.get(name, 0))
        return floor, max(floor, self.host.pool_max_sizes.get(name, floor))

    def target(self, name: str) -> int:
        return self.sizer.target(name, *self.bounds(name))

    def status(self) -> dict[str, dict[str, int]]:
        """Per pooled kernelspec: ready now, the size it aims at, its bounds."""
        names = sorted(set(self.host.pool_sizes) | set(self.host.pool_max_sizes))
        return {name: {"ready": len(self.ready.get(name, [])), "size": self.target(name),
                       "min": self.bounds(name)[0], "max": self.bounds(name)[1]} for name in names}

    def _room_in_share(self, name: str) -> bool:
        """A pool grown above its configured floor keeps all ready kernels (and those being made)
        within their share of the memory budget; the floor is the operator's to size."""
        budget = self.room.budget_bytes()
        if not budget or len(self.ready.get(name, [])) + self.filling.get(name, 0) < self.bounds(name)[0]:
            return True
        pooled = self.count() + sum(self.filling.values()) + 1
        return pooled * self.room.memory_of(name, None) <= budget * self.host.pool_budget_share

    def fill(self) -> None:
        """Start what each pool lacks, in the background, within the store's limits."""
        host = self.host
        if host.closing:
            return
        if self._sem is None:
            self._sem = asyncio.Semaphore(max(1, host.pool_concurrency))
            if host.pool_specialise:
                self._fill_tasks.spawn(current_backend().prepare_attach())
        for name in sorted(set(host.pool_sizes) | set(host.pool_max_sizes)):
            target = self.target(name)
            have = len(self.ready.get(name, []))
            if have > target and self._trim_timer is None:
                self._trim_timer = asyncio.get_running_loop().call_later(TRIM_AFTER, self._trim)
            for _ in range(max(0, target - have - self.filling.get(name, 0))):
                if not self.room.room_for_pooled(name, sum(self.filling.values())) or not self._room_in_share(name):
                    break
                self.filling[name] = self.filling.get(name, 0) + 1
                self._fill_tasks.spawn(self._fill_one(name))

    def _refill_soon(self, name: str) -> None:
        """Refill now when the pool ran dry; while it still has ready kernels, a moment later: a
        refill's first steps (a kernel manager made, the engine's create call) take the loop and
        the GIL for milliseconds, which the start just served would otherwise wait for."""
        if not self.ready.get(name):
            self.fill()
        elif self._refill_timer is None:
            def refill() -> None:
                self._refill_timer = None
                self.fill()
            self._refill_timer = asyncio.get_running_loop().call_later(REFILL_DEFER, refill)

    def _trim(self) -> None:
        """Stop the ready kernels a pool holds beyond its target now (the oldest first)."""
        self._trim_timer = None
        if self.host.closing:
            return
        for name, ready in self.ready.items():
            for km in ready[: max(0, len(ready) - self.target(name))]:
                ready.remove(km)
                self._fill_tasks.spawn(self.host.discard(km))
        self.fill()  # re-arms itself while a pool is still over its target

    async def _fill_one(self, name: str) -> None:
        assert self._sem is not None
        host = self.host
        try:
            async with self._sem:
                began = time.monotonic()
                self.launching[name] = self.launching.get(name, 0) + 1
                try:
                    km = await host.launch(LaunchRequest(owner="", kernel_name=name))
                finally:
                    self.launching[name] -= 1
                self.sizer.note_launch(name, time.monotonic() - began)
                # Its output subscription made live now (the warm-up's statuses usually do it): the
                # caller's websocket then waits for no probe. One quiet execution warms the
                # kernel's execute path: the caller's first execute answers as fast as any later one.
                hub = hub_of(km)
                warm_up = WARM_UP_CODE.get(self._language(name))
                try:
                    if warm_up is not None:
                        await self._execute_quietly(km, warm_up)
                    await hub.ready(WARM_UP_TIMEOUT)
                except BaseException:
                    await host.discard(km)
                    raise
        except Exception as e:  # noqa: BLE001 - a failing pool must not take the gateway down
            host.log.warning("Pool %s: a kernel failed to start (%s); retrying in 10 s", name, e)
            asyncio.get_running_loop().call_later(10.0, self.fill)
            self._release_waiters(name)
            return
        finally:
            self.filling[name] = self.filling.get(name, 1) - 1
        km.execution_state = "idle"
        if km.docker is not None:
            km.docker.exit_callback = lambda code, k=km: self._died(name, k)
        self._deliver(name, km)

    def _deliver(self, name: str, km: GatewayKernel) -> None:
        """A ready kernel goes to the start that has waited longest for one, else into the pool."""
        waiters = self._waiters.get(name, [])
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(km)
                return
        self.ready.setdefault(name, []).append(km)

    def _release_waiters(self, name: str) -> None:
        """Starts waiting on more refills than are under way start cold instead."""
        waiters = self._waiters.get(name, [])
        while len(waiters) > self.launching.get(name, 0):
            waiter = waiters.pop()
            if not waiter.done():
                waiter.set_result(None)

    async def _next(self, name: str) -> GatewayKernel | None:
        """A ready kernel, or the next one of a refill already under way that no other start waits
        for (it is ready sooner than a cold start would be, and costs the host nothing more: under a
        burst, starts go at the pace of the refills instead of piling cold starts on the same cores)."""
        ready = self.ready.get(name)
        if ready:
            return ready.pop(0)
        waiters = self._waiters.setdefault(name, [])
        if self.launching.get(name, 0) <= len(waiters):
            return None
        waiter: asyncio.Future[GatewayKernel | None] = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            await asyncio.wait({waiter}, timeout=JOIN_TIMEOUT)
        except BaseException:  # the start was cancelled: a kernel handed over meanwhile is not lost
            if waiter.done() and not waiter.cancelled() and (km := waiter.result()) is not None:
                self._deliver(name, km)
            waiter.cancel()
            raise
        finally:
            if waiter in waiters:
                waiters.remove(waiter)
        if not waiter.done():
            waiter.cancel()
            return None
        return waiter.result()

    def _died(self, name: str, km: GatewayKernel) -> None:
        if km in self.ready.get(name, []):
            self.ready[name].remove(km)
            asyncio.ensure_future(self.host.discard(km))
            self.fill()

    def _language(self, name: str) -> str:
        """The language of `name`'s pooled kernels, read from its kernelspec once (jupyter_client
        reads the spec from disk at each call, and a start would ask three times)."""
        if name not in self._languages:
            words = (self.host.kernel_spec_manager.get_kernel_spec(name).language or "").lower().split()
            self._languages[name] = words[0] if words else ""
        return self._languages[name]

    def servable(self, request: LaunchRequest) -> bool:
        """Whether a ready kernel can be made exactly what `request` asks."""
        if request.is_plain and not request.all_env:
            return True
        if not self.host.pool_specialise or request.limits.gpus or request.labels:
            return False  # GPUs and labels are fixed when a container is made
        if request.mounts:
            if self._no_mounts is None:
                self._mounts_off(current_backend().can_attach_mounts())
            if self._no_mounts:
                return False
        return set_env_code(self._language(request.kernel_name), request.all_env) is not None

    def _mounts_off(self, reason: str) -> None:
        """Record whether folders can be bound at hand-out here ('' : they can)."""
        self._no_mounts = reason
        if reason:
            self.host.log.warning("Pool: starts with folders will be cold: %s", reason)

    def has_ready(self, name: str) -> bool:
        """A ready kernel now, or one under way that no other start waits for."""
        return bool(self.ready.get(name)) or self.launching.get(name, 0) > len(self._waiters.get(name, []))

    async def take(self, request: LaunchRequest) -> GatewayKernel | None:
        """A ready kernel made exactly what was asked, or None (then the start is cold)."""
        host = self.host
        name = request.kernel_name
        pooled = self.bounds(name)[1] > 0
        if pooled:
            self.sizer.note_start(name)
        km = await self._next(name) if pooled and self.servable(request) else None
        if pooled:  # the refill of the one taken; the rate may have raised the target too
            self._refill_soon(name)
        if km is None:
            if pooled:
                self.misses += 1
            return None
        if not await km.is_alive() or km.docker is None:
            await host.discard(km)
            self.misses += 1
            return None
        try:
            await self._specialise(km, request)
        except (GatewayError, OSError) as e:  # never hand out a kernel that differs
            host.log.warning("Pool %s: a pooled kernel could not be specialised (%s); starting cold", name, e)
            if request.mounts and "folders could not be mounted" in str(e):
                # Twice in a row: this host cannot (e.g. a gateway in a container without
                # CAP_SYS_ADMIN or the host's /proc); such starts go cold instead of using kernels up.
                self._mount_failures += 1
                if self._mount_failures >= 2:
                    self._mounts_off(str(e))
            await host.discard(km)
            self.misses += 1
            return None
        km.docker.exit_callback = None  # the store's watcher sets its own
        if request.mounts:
            self._mount_failures = 0
        self.hits += 1
        return km

    async def _specialise(self, km: GatewayKernel, request: LaunchRequest) -> None:
        """Limits and folders on the container, env in the kernel: at once (each is milliseconds)."""
        prov = km.docker
        assert prov is not None
        km.limits = request.limits  # promised from now on: concurrent starts count it
        code = set_env_code(self._language(request.kernel_name), prov.env_for(request))
        if code is None:
            raise KernelStartFailed("the env cannot be set in a running kernel")
        await gather_all(prov.specialise(request), *([self._execute_quietly(km, code)] if code else []))

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
