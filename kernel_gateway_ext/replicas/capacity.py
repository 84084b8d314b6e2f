"""Capacity across replicas: the per-owner kernel limit, the kernel total and the memory budget
hold for the cluster, not for each replica.

Each replica keeps its own rows in the store's `loads` table, always rewritten from what it runs
(never incremented: a missed update heals at the next write). A start is admitted under one lock
in the store (a PostgreSQL advisory lock, held for a few milliseconds): the other replicas' rows
plus this one's own count, then this replica's rows are written with the start included.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import Forbidden, OverCapacity, TooManyKernels
from ..store import Store
from ..store.db import Statements

GIB = 2**30


@dataclass
class Load:
    """What one replica runs: kernels per owner, its kernel total and the memory it promised."""

    per_owner: Counter[str] = field(default_factory=Counter)
    kernels: int = 0
    memory: int = 0


@dataclass(frozen=True)
class Limits:
    per_owner: int  # 0: none
    kernels: int
    budget: int  # bytes, 0: none


class SharedCapacity:
    def __init__(self, store: Store, gateway: Callable[[], str], local: Callable[[], Load],
                 limits: Callable[[], Limits], log: Any) -> None:
        self.store = store
        self.gateway = gateway
        self.local = local
        self.limits = limits
        self.log = log
        self._sync: asyncio.Task[None] | None = None
        self._again = False
        # Admitted starts not yet in what this replica runs (their kernel is still being made).
        self._pending: list[Load] = []

    def _load(self) -> Load:
        load = self.local()
        for p in self._pending:
            load.per_owner.update(p.per_owner)
            load.kernels += p.kernels
            load.memory += p.memory
        return load

    def _lock(self) -> str:
        return f"capacity:{self.gateway()}"

    async def admit(self, owner: str | None, kernels: int = 1, memory: int = 0,
                    owner_limit: tuple[int, str] | None = None) -> Load:
        """Admit a start of `kernels` more kernels for `owner` promising `memory` more bytes, or
        refuse it as one gateway would (403, 429). `owner` is a key of the per-owner counts (a user
        for kernels, `session:KIND:USER` for Skaha sessions); `owner_limit` its limit and what it
        counts (default: the kernels per owner). The caller gives the answer back to `done` once its
        kernel or session is counted in what this replica runs."""
        async with self.store.transaction(lock=self._lock()) as tx:
            rows = await tx.fetch("SELECT owner, SUM(kernels) AS n, SUM(memory) AS m FROM loads "
                                  "WHERE gateway = ? AND home <> ? GROUP BY owner", self.gateway(), self.store.home)
            others = {r["owner"]: (int(r["n"] or 0), int(r["m"] or 0)) for r in rows}
            load, limits = self._load(), self.limits()
            most, what = owner_limit or (limits.per_owner, "kernels")
            if owner is not None and most:
                has = load.per_owner[owner] + others.get(owner, (0, 0))[0]
                if has >= most:
                    user = owner.rsplit(":", 1)[-1]
                    if owner_limit is None:
                        raise TooManyKernels(f"{user} already has the maximum of {most} {what}")
                    raise Forbidden(f"{user} already has the maximum of {most} {what} running; delete one first")
            total_kernels, total_memory = others.get("", (0, 0))
            if kernels and limits.kernels and load.kernels + total_kernels + kernels > limits.kernels:
                raise TooManyKernels(f"the gateway runs its maximum of {limits.kernels} kernels")
            promised = load.memory + total_memory
            if memory and limits.budget and promised + memory > limits.budget:
                raise OverCapacity(f"the memory budget is spent: {promised / GIB:.1f} GiB of {limits.budget / GIB:.1f} "
                                   f"GiB promised across the replicas, {memory / GIB:.1f} GiB more asked")
            pending = Load(Counter({owner: 1} if owner is not None else {}), kernels, memory)
            self._pending.append(pending)
            load.per_owner.update(pending.per_owner)
            load.kernels += kernels
            load.memory += memory
            try:
                await self._write(tx, load)
            except BaseException:
                self._pending.remove(pending)
                raise
        return pending

    def done(self, pending: Load) -> None:
        """An admitted start has ended (its kernel now counts, or it failed)."""
        if any(p is pending for p in self._pending):
            self._pending = [p for p in self._pending if p is not pending]
            self.sync_soon()

    async def sync(self) -> None:
        """Rewrite this replica's rows from what it runs now."""
        async with self.store.transaction(lock=self._lock()) as tx:
            await self._write(tx, self._load())

    def sync_soon(self) -> None:
        """`sync` in the background; calls while one runs make one more, not one each."""
        if self._sync is not None and not self._sync.done():
            self._again = True
            return
        self._sync = asyncio.ensure_future(self._sync_loop())

    async def _sync_loop(self) -> None:
        while True:
            self._again = False
            try:
                await self.sync()
            except Exception as e:  # noqa: BLE001 - the next admission or removal writes them again
                self.log.warning("could not write this replica's load to the store: %s", e)
            if not self._again:
                return

    async def _write(self, tx: Statements, load: Load) -> None:
        gateway, home = self.gateway(), self.store.home
        await tx.execute("DELETE FROM loads WHERE gateway = ? AND home = ?", gateway, home)
        await tx.execute("INSERT INTO loads (gateway, home, owner, kernels, memory) VALUES (?, ?, '', ?, ?)",
                         gateway, home, load.kernels, load.memory)
        for owner, n in load.per_owner.items():
            if n:
                await tx.execute("INSERT INTO loads (gateway, home, owner, kernels, memory) VALUES (?, ?, ?, ?, 0)",
                                 gateway, home, owner, n)

    async def forget(self, replica: str) -> None:
        """A dead replica's rows go (its taker's own rows now count what it adopted)."""
        await self.store.execute("DELETE FROM loads WHERE gateway = ? AND home = ?", self.gateway(), replica)
