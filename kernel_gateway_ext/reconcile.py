"""Matching containers with the store's records: at start (adopt what this gateway or replica
left, remove what nobody owns), when a replica takes over a dead one, and the capacity the
replicas share. Reaches the gateway only through `ReconcileHost`."""
from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Protocol

from .containers import current_backend
from .containers.spec import LABEL_KERNEL_ID, LABEL_REPLICA
from .jobs import JobManager
from .jobs.records import LABEL_SESSION_ID, RECORD_KIND as JOB_RECORD
from .kernels.adoption import RECORD_KIND as KERNEL_RECORD
from .kernels.jupyter_sessions import JupyterSessions
from .kernels.manager import GatewayKernelManager
from .replicas import Replicas
from .replicas.capacity import Limits, Load, SharedCapacity
from .store import Store


class ReconcileHost(Protocol):
    log: Any
    store: Store
    replicas: Replicas
    kernel_manager: GatewayKernelManager
    jobs: JobManager
    jupyter_sessions: JupyterSessions
    adopt: bool


class Reconciler:
    def __init__(self, host: ReconcileHost) -> None:
        self.host = host

    async def adopt(self, replica: str, fresh_start: bool = False) -> None:
        """Adopt the kernels and sessions recorded as this replica's, then remove the containers
        `replica` made that nobody owns any more (its pooled kernels, half-made starts)."""
        backend = current_backend()
        containers = await backend.list_ours()
        adopted: set[str] = set()
        if self.host.adopt or not fresh_start:
            adopted |= await self.host.kernel_manager.adopter.adopt(containers)
            adopted |= await self.host.jobs.adopt(containers)
            await self.host.jupyter_sessions.load({km.kernel_id for km in self.host.kernel_manager.list()})
        else:
            await self.host.store.delete_records(backend.gateway_id)
        # With replicas, each removes only what `replica` made and no replica's record names (a
        # kernel it made may be another's now, taken over while it was away).
        recorded: set[str] = set()
        if self.host.replicas.enabled:
            for kind in (KERNEL_RECORD, JOB_RECORD):
                recorded |= {r["id"] for r in await self.host.store.records(kind, backend.gateway_id, any_home=True)}
        kept: set[str] = set()
        folders = backend.ipc_folders  # kernels without a network: their sockets' folders go with them
        for c in containers:
            kernel_id = c.labels.get(LABEL_KERNEL_ID)
            named = {kernel_id, c.labels.get(LABEL_SESSION_ID)}
            if c.id not in adopted and c.labels.get(LABEL_REPLICA, "") == replica and not named & recorded:
                self.host.log.warning("Removing container %s: nobody owns it any more", c.short_id)
                await backend.remove(c.id)
                if kernel_id and folders is not None:
                    await asyncio.to_thread(folders.remove, kernel_id)
            elif kernel_id:
                kept.add(kernel_id)
        if folders is not None:  # and those whose containers were gone already
            for kernel_id in await asyncio.to_thread(folders.prune, kept):
                self.host.log.warning("Removed the socket folder of kernel %s: its container is gone", kernel_id)

    async def take_over(self, dead: str) -> None:
        """Replica `dead` is gone: its kernels and sessions are this replica's now."""
        moved = await self.host.store.move_home(current_backend().gateway_id, dead, self.host.replicas.replica_id)
        await self.adopt(dead)
        if self.host.kernel_manager.shared is not None:
            await self.host.kernel_manager.shared.sync()  # this replica's load now counts what it adopted
            await self.host.kernel_manager.shared.forget(dead)
        self.host.log.warning("Took over replica %s: %d records", dead, moved)

    def share_capacity(self) -> None:
        """Capacity limits across the replicas: each one's load in the store, starts admitted against the sum."""
        mgr = self.host.kernel_manager
        cap = mgr.capacity

        def local() -> Load:
            # Kernels in the store, and pooled ones being made; a user's start under way is not
            # counted here: it is pending in SharedCapacity from its admission until it is in the store.
            kms = mgr.list()
            kms += [km for km in mgr.every_kernel() if not km.owner and km not in kms]
            per_owner = Counter(km.owner for km in kms if km.owner) + self.host.jobs.active_per_owner()
            return Load(per_owner, len(kms), cap.promised_memory(kms))

        def limits() -> Limits:
            return Limits(mgr.max_kernels_per_owner, mgr.max_kernels, cap.budget_bytes())
        shared = SharedCapacity(self.host.store, lambda: current_backend().gateway_id, local, limits, self.host.log)
        mgr.shared = self.host.jobs.shared = shared
        mgr.on_removal(lambda kernel_id: shared.sync_soon())

