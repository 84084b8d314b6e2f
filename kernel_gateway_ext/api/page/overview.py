"""What the web page shows: one list of a caller's kernels (Jupyter and v2) and Skaha sessions,
their figures of the last minutes, and the operator's view of capacity and pools.

Read from the gateway's own parts (no request to itself); who sees what is the authorizer's to
say, as for every dialect.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ...auth import Identity
from ...containers.fleet import FLEET
from ...containers import current_backend
from ...kernels.kernel import GatewayKernel
from ...jobs.records import JobRecord
from ..context import GatewayContext

HISTORY = 100  # samples kept per kernel or session (5 minutes at the default 3 s)


@dataclass
class Figures:
    """One kernel's or session's memory and CPU, sampled while a page watches."""

    samples: deque[tuple[float, int, float]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    last_cpu: tuple[float, int] | None = None  # (monotonic time, CPU ns) of the previous sample

    def add(self, memory: int, cpu_ns: int) -> None:
        now = time.monotonic()
        cores = 0.0
        if self.last_cpu is not None and now > self.last_cpu[0] and cpu_ns >= self.last_cpu[1]:
            cores = (cpu_ns - self.last_cpu[1]) / 1e9 / (now - self.last_cpu[0])
        self.last_cpu = (now, cpu_ns)
        self.samples.append((round(time.time(), 1), memory, round(cores, 3)))


class FigureBook:
    """Figures per kernel or session id; ids no longer shown are dropped (bounded by what runs)."""

    def __init__(self) -> None:
        self.by_id: dict[str, Figures] = {}

    def add(self, ident: str, memory: int, cpu_ns: int) -> None:
        self.by_id.setdefault(ident, Figures()).add(memory, cpu_ns)

    def keep_only(self, idents: set[str]) -> None:
        for gone in set(self.by_id) - idents:
            del self.by_id[gone]

    def latest(self, ident: str) -> list[Any] | None:
        figures = self.by_id.get(ident)
        return list(figures.samples[-1]) if figures and figures.samples else None

    def series(self, ident: str) -> list[list[Any]]:
        figures = self.by_id.get(ident)
        return [list(s) for s in figures.samples] if figures else []


def _ts(value: Any) -> float | None:
    return round(value.timestamp(), 3) if value is not None else None


def kernel_item(gw: GatewayContext, km: GatewayKernel) -> dict[str, Any]:
    limits = km.effective_limits()
    mgr = gw.kernel_manager
    timeout = mgr.culler.idle_timeout_of(km)
    ends_at, ends_why = None, ""
    if timeout > 0:
        ends_at = km.last_activity.timestamp() + timeout
        ends_why = "culled when idle"
        if km.connections and not mgr.cull_connected:
            ends_at, ends_why = None, "kept while connected"
    return {
        "kind": "kernel", "dialect": "v2" if km.client_token else "jupyter", "id": km.kernel_id,
        "token": km.client_token, "name": km.kernel_name, "owner": km.owner, "state": km.execution_state,
        "reason": km.reason, "created": _ts(km.created), "last_activity": _ts(km.last_activity),
        "connections": km.connections, "node": km.node, "restarts": km.restart_count,
        "limits": {"memory": limits.memory_bytes or 0, "cpus": limits.cpus or 0, "gpus": limits.gpus or 0},
        "ends_at": ends_at, "ends_why": ends_why,
    }


def session_item(gw: GatewayContext, rec: JobRecord) -> dict[str, Any]:
    jobs = gw.jobs
    return {
        "kind": "session", "dialect": "skaha", "id": rec.id, "token": None, "name": rec.name, "image": rec.image,
        "type": rec.type, "owner": rec.owner, "state": rec.status, "reason": "", "created": rec.created,
        "started": rec.start_time, "last_activity": None, "connections": 0, "node": jobs.node_of(rec),
        "limits": {"memory": rec.ram * 2**30, "cpus": rec.cores, "gpus": rec.gpus},
        "ends_at": rec.expiry, "ends_why": "expires", "exit_code": rec.exit_code,
        "connect_path": jobs.notebook_path(rec.id) if rec.type == "notebook" else None,
        "events": [list(event) for event in rec.events[-10:]],
    }


def items_for(gw: GatewayContext, identity: Identity, book: FigureBook, series: bool = False) -> list[dict[str, Any]]:
    """Everything the caller may see, newest first, with its latest figures (and, `series`, the
    figures of the last minutes)."""
    authorizer = gw.authorizer
    out = [kernel_item(gw, km) for km in authorizer.visible(identity, gw.kernel_manager.list())]
    out += [session_item(gw, rec) for rec in authorizer.visible(identity, gw.jobs.list())]
    for item in out:
        item["usage"] = book.latest(item["id"])
        if series:
            item["series"] = book.series(item["id"])
    out.sort(key=lambda i: i["created"] or 0, reverse=True)
    return out


async def capacity(gw: GatewayContext) -> dict[str, Any]:
    """The operator's view: memory promised against the budget, per node too, and the pools."""
    mgr, jobs = gw.kernel_manager, gw.jobs
    per_node: dict[str, dict[str, Any]] = {}
    if gw.docker_available:
        await FLEET.refresh(current_backend())
    for node in FLEET.nodes:
        per_node[node.name] = {"name": node.name, "memory": node.memory, "cpus": node.cpus, "ready": node.ready,
                               "promised": 0, "kernels": 0, "sessions": 0}

    def count(node: str, memory: int, what: str) -> None:
        row = per_node.setdefault(node or "?", {"name": node or "?", "memory": 0, "cpus": 0, "ready": True,
                                                "promised": 0, "kernels": 0, "sessions": 0})
        row["promised"] += memory
        row[what] += 1

    for km in mgr.every_kernel():
        if km.docker is not None:
            count(km.node, km.effective_limits().memory_bytes or 0, "kernels")
    for rec in jobs.list():
        if rec.status in ("Pending", "Running"):
            count(jobs.node_of(rec), rec.ram * 2**30, "sessions")
    return {
        "budget": mgr.capacity.budget_bytes(), "promised": mgr.capacity.promised_memory(),
        "kernels": mgr.capacity.count(), "max_kernels": mgr.max_kernels,
        "max_kernels_per_owner": mgr.max_kernels_per_owner,
        "sessions": sum(1 for r in jobs.list() if r.status in ("Pending", "Running")),
        "nodes": sorted(per_node.values(), key=lambda n: n["name"]),
        "pools": mgr.pool.status(), "pool_hits": mgr.pool.hits, "pool_misses": mgr.pool.misses,
    }
