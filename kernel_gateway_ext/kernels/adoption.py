"""Nothing lost: kernels are records in the store (never their key: it is derived from the master
key and a nonce), and a restarted gateway adopts the containers an earlier process left.

`KernelRecords` writes and deletes the records; `Adopter` takes the kernels back. Both are
collaborators of the kernel store; the adopter reaches it only through `AdoptionHost`."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol

from jupyter_client.provisioning import KernelProvisionerFactory

from ..containers import current_backend
from ..containers.backend import Owned
from ..containers.limits import KernelLimits
from ..containers.spec import LABEL_KIND
from ..errors import KernelStartFailed
from ..provisioners.launch import LaunchRequest
from ..store import Store
from ..tasks import TaskSet
from .kernel import GatewayKernel
from .probes import wait_ready

RECORD_KIND = "kernel"  # the store's record kind for kernels
ADOPT_CONCURRENCY = 16  # kernels adopted at once at start
ADOPT_READY_TIMEOUT = 10.0  # an adopted kernel that does not answer within it is reported dead


def gateway_id() -> str:
    return current_backend().gateway_id


class KernelRecords:
    """The store's kernel records: written when a container kernel starts or restarts, deleted when
    it leaves. Writes in the background are held until they land (`flush`)."""

    def __init__(self, store: Store | None, log: Any, in_store: Callable[[GatewayKernel], bool]) -> None:
        self.store = store
        self._in_store = in_store  # a kernel gone before its write runs gets no record
        self._tasks = TaskSet(log, "store write")

    async def put(self, km: GatewayKernel) -> None:
        """Write (or update) the kernel's record; only container kernels can be adopted."""
        if self.store is None or km.docker is None or not self._in_store(km):
            return
        await self.store.put_record(RECORD_KIND, km.kernel_id, gateway_id(), km.owner, km.record(),
                                    token=km.client_token or "")
        km.persisted = True

    def put_later(self, km: GatewayKernel) -> None:
        if km.persisted:
            self._tasks.spawn(self.put(km))

    def delete_later(self, km: GatewayKernel) -> None:
        if km.persisted and self.store is not None:
            self._tasks.spawn(self.store.delete_record(RECORD_KIND, km.kernel_id))
        if km.client_token and self.store is not None and self.store.home:  # replicas: the token is free again
            self._tasks.spawn(self.store.unclaim(gateway_id(), km.owner, km.client_token))

    async def flush(self) -> None:
        """Wait for record writes and deletions in flight."""
        await self._tasks.wait()


class AdoptionHost(Protocol):
    """What adoption needs of the kernel store."""

    log: Any
    parent: Any

    def new_kernel(self, kernel_name: str, kernel_id: str) -> GatewayKernel: ...  # not yet in the store

    def derive_key(self, km: GatewayKernel) -> None: ...

    def launch_kwargs(self, request: LaunchRequest) -> dict[str, Any]: ...

    def admit(self, km: GatewayKernel) -> None: ...  # into the store, before it is probed

    def forget(self, kernel_id: str) -> None: ...

    def find(self, kernel_id: str) -> GatewayKernel | None: ...

    def watch(self, km: GatewayKernel) -> None: ...

    def arm_cull(self, km: GatewayKernel) -> None: ...


class Adopter:
    def __init__(self, host: AdoptionHost, records: KernelRecords) -> None:
        self.host = host
        self.records = records

    async def adopt(self, containers: list[Owned]) -> set[str]:
        """Take over the kernels an earlier process of this gateway id left running (kill -9,
        or a stop with keep_on_exit): same id, owner, key and state. Returns the container ids
        adopted; records whose container is gone are dropped."""
        store, log = self.records.store, self.host.log
        if store is None:
            return set()
        by_id = {c.id: c for c in containers if c.labels.get(LABEL_KIND) == "kernel"}
        adopted: set[str] = set()
        # Concurrently, so one kernel that no longer answers (10 s) does not hold up the others.
        sem = asyncio.Semaphore(ADOPT_CONCURRENCY)

        async def one(rec: dict[str, Any]) -> None:
            if self.host.find(rec["id"]) is not None:
                return  # already served here (a takeover adopts only the dead replica's)
            container = by_id.get(rec.get("container_id") or "")
            if container is None:
                log.warning("Kernel %s: its container is gone; dropping its record", rec["id"])
                await store.delete_record(RECORD_KIND, rec["id"])
                return
            try:
                async with sem:
                    km = await self._adopt_one(rec, container.id)
            except Exception as e:  # noqa: BLE001 - one broken record must not stop the gateway
                log.warning("Kernel %s could not be adopted (%s); removing it", rec["id"], e)
                self.host.forget(rec["id"])
                await store.delete_record(RECORD_KIND, rec["id"])
                return
            adopted.add(container.id)
            self.host.arm_cull(km)
            log.info("Kernel adopted: %s (%s) of %s, %s", km.kernel_id, km.kernel_name, km.owner, km.execution_state)

        await asyncio.gather(*(one(rec) for rec in await store.records(RECORD_KIND, gateway_id())))
        return adopted

    async def _adopt_one(self, rec: dict[str, Any], container_id: str) -> GatewayKernel:
        host = self.host
        kernel_id, name = rec["id"], rec["kernel_name"]
        km = host.new_kernel(name, kernel_id)
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
        host.derive_key(km)
        # What a restart re-runs start_kernel with (the container stays; these are not re-applied).
        km._launch_args = host.launch_kwargs(LaunchRequest(owner=km.owner, kernel_name=name, limits=km.limits))
        km.provisioner = KernelProvisionerFactory.instance(parent=host.parent).create_provisioner_instance(
            kernel_id, km.kernel_spec, parent=km)
        prov = km.docker
        if prov is None:
            raise KernelStartFailed(f"kernelspec {name!r} no longer runs in containers")
        await prov.load_provisioner_info({"container_id": container_id, "owner": km.owner,
                                          "hot_mounts": rec.get("hot_mounts") or [], "ipc_dir": rec.get("ipc_dir") or ""})
        km.load_connection_info(prov.connection_info)
        km.persisted = True
        host.admit(km)
        if await prov.poll() is None:
            try:
                await wait_ready(km, ADOPT_READY_TIMEOUT)
                km.execution_state = "idle"
            except KernelStartFailed as e:
                km.execution_state, km.reason = "dead", f"did not answer after the gateway restarted: {e}"
        else:
            km.execution_state = "dead"
            km.reason = "killed: out of memory" if prov.oom_killed else f"exited with code {await prov.poll()}"
        host.watch(km)
        return km
