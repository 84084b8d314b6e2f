"""Warm pools: ready kernels per kernelspec, refilled in the background within the limits, handed
to starts they can serve exactly (a start they cannot serve is cold, never given a different kernel)."""
from __future__ import annotations

import asyncio
import json
import time

import zmq
import zmq.asyncio
from jupyter_client.session import Session
from traitlets import Dict, HasTraits, Int

from ..config import env
from ..errors import KernelStartFailed
from ..provisioners.launch import LaunchRequest
from .channels import zmq_url
from .kernel import GatewayKernel

WARM_UP_CODE = {"python": "pass", "bash": "true"}  # what a pooled kernel runs once before it is handed out


class WarmPoolMixin(HasTraits):
    """Part of GatewayKernelManager: the warm pool."""

    pool_sizes = env(
        Dict(value_trait=Int(), help="Ready kernels kept per kernelspec, handed to starts that they can serve "
             "exactly (e.g. --GatewayKernelManager.pool_sizes python3=4; env: JSON)."),
        "KGE_POOL_SIZES",
    )
    pool_concurrency = env(Int(2, help="Pool kernels started at once while refilling."), "KGE_POOL_CONCURRENCY")

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
                filling = (sum(self._pool_filling.values()) + 1) * self.memory_of(name, None)
                if budget and self.promised_memory() + filling > budget:
                    return
                self._pool_filling[name] = self._pool_filling.get(name, 0) + 1
                self._fill_tasks.spawn(self._fill_one(name))

    async def _fill_one(self, name: str) -> None:
        assert self._pool_sem is not None
        try:
            async with self._pool_sem:
                km = await self._launch(LaunchRequest(owner="", kernel_name=name))
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

    async def _take_pooled(self, request: LaunchRequest) -> GatewayKernel | None:
        """A ready kernel made exactly what was asked, or None (then the start is cold)."""
        name = request.kernel_name
        ready = self._pool.get(name)
        if not ready:
            if name in self.pool_sizes:
                self.pool_misses += 1
            return None
        # Mounts, limits and labels are fixed when a container is made: only defaults pool.
        if not request.is_plain:
            self.pool_misses += 1
            return None
        wanted = request.all_env
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
        await self._execute_quietly(km, f"import os as _o; _o.environ.update({json.dumps(wanted)}); del _o")

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
