"""Nothing lost: kernels are records in the store (never their key: it is derived from the master
key and a nonce), and a restarted gateway adopts the containers an earlier process left."""
from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from jupyter_client.provisioning import KernelProvisionerFactory
from traitlets import HasTraits, Instance

from ..errors import KernelStartFailed
from ..containers.engine import LABEL_KIND, DockerEngine
from ..containers.limits import KernelLimits
from ..provisioners.launch import LaunchRequest
from ..store import Store
from ..tasks import TaskSet
from .kernel import GatewayKernel

RECORD_KIND = "kernel"  # the store's record kind for kernels
ADOPT_CONCURRENCY = 16  # kernels adopted at once at start


class AdoptionMixin(HasTraits):
    """Part of GatewayKernelManager: writing kernel records and adopting them after a restart."""

    store = Instance(Store, allow_none=True, help="Where kernel records outlive the process (set by the app).")

    derive_secret: Callable[[str, str], str] | None = None  # set by the app: (purpose, nonce) -> secret
    _store_tasks: TaskSet  # record writes and deletions in flight

    async def persist(self, km: GatewayKernel) -> None:
        """Write (or update) the kernel's record; only container kernels can be adopted."""
        if self.store is None or km.docker is None or km.kernel_id not in self._kernels:
            return
        await self.store.put_record(RECORD_KIND, km.kernel_id, DockerEngine.instance().gateway_id, km.owner, km.record())
        km.persisted = True

    async def flush_store(self) -> None:
        """Wait for record writes and deletions in flight."""
        await self._store_tasks.wait()

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
        # Concurrently, so one kernel that no longer answers (10 s) does not hold up the others.
        sem = asyncio.Semaphore(ADOPT_CONCURRENCY)

        async def one(rec: dict[str, Any]) -> None:
            container = by_id.get(rec.get("container_id") or "")
            if container is None:
                self.log.warning("Kernel %s: its container is gone; dropping its record", rec["id"])
                await self.store.delete_record(RECORD_KIND, rec["id"])
                return
            try:
                async with sem:
                    km = await self._adopt_one(rec, container.id)
            except Exception as e:  # noqa: BLE001 - one broken record must not stop the gateway
                self.log.warning("Kernel %s could not be adopted (%s); removing it", rec["id"], e)
                self._kernels.pop(rec["id"], None)
                await self.store.delete_record(RECORD_KIND, rec["id"])
                return
            adopted.add(container.id)
            self.arm_cull(km)
            self.log.info("Kernel adopted: %s (%s) of %s, %s", km.kernel_id, km.kernel_name, km.owner, km.execution_state)

        await asyncio.gather(*(one(rec) for rec in await self.store.records(RECORD_KIND, gateway)))
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
        km._launch_args = self._launch_kwargs(LaunchRequest(owner=km.owner, kernel_name=name, limits=km.limits))
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
