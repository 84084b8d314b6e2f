"""Which replicas live, and taking over the kernels and sessions of one that died.

Each replica holds the lease `replica:<id>` in the shared store and renews it every third of its
length; its row also says where the replica serves, for forwarding. A lease that runs out means its
replica died (kill -9, a lost host) or stopped (a stop expires it at once). Every replica looks at
the leases when it renews its own; the first to take a dead one's lease (an atomic update in the
store: exactly one wins) moves the dead replica's records home to itself and adopts its containers.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from traitlets import Float, Unicode

from ..config import EnvConfigurable, env
from ..store import Store
from ..tasks import TaskSet

PREFIX = "replica:"
CHANNEL = "kge_replicas"  # NOTIFY: a replica left


def _live_replica(lease: dict[str, Any]) -> str | None:
    """The id of the replica whose lease this is, if it is live and held by that replica itself
    (not by another taking it over)."""
    rid = str(lease["name"][len(PREFIX):])
    return rid if lease["live"] and lease["holder"].startswith(rid + "/") else None


class ReplicaIdTaken(SystemExit):
    """Another live process holds this replica id."""


class Replicas(EnvConfigurable):
    replica_id = env(Unicode("", help="This gateway's replica id. Several replicas (distinct ids, one "
                                      "--gateway-id as the cluster id, the same master key) share a PostgreSQL "
                                      "store and serve any kernel behind a load balancer with no affinity. "
                                      "Empty: one gateway, no replicas."), "KGE_REPLICA_ID")
    advertise_url = env(Unicode("", help="Where other replicas reach this one (http://HOST:PORT/BASE/); "
                                         "default: this gateway's own URL."), "KGE_REPLICA_URL")
    lease_seconds = env(Float(5.0, help="A replica that has not renewed its lease for this long is dead: "
                                        "another takes its kernels and sessions over."), "KGE_REPLICA_LEASE_SECONDS")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store: Store | None = None
        self.url = ""
        # Holder names are unique per process: a second process with the same id is refused.
        self.holder = f"{self.replica_id}/{os.getpid()}@{socket.gethostname()}/{secrets.token_hex(4)}"
        self._peers: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._takeovers = TaskSet(self.log, "takeover")
        self._on_takeover: Callable[[str], Awaitable[None]] | None = None
        self._leaving = False
        self._taking_over = 0
        self._settled = asyncio.Event()  # set while no takeover is under way
        self._settled.set()

    @property
    def enabled(self) -> bool:
        return bool(self.replica_id)

    async def join(self, store: Store, url: str, on_takeover: Callable[[str], Awaitable[None]]) -> None:
        """Take this replica's lease (waiting out a dead earlier process's), then keep it."""
        if not self.enabled:
            return
        if not store.shared:
            self.log.warning("replica %s uses a %s store: other replicas cannot share it (use postgresql://)",
                             self.replica_id, store.dialect)
        self.store, self.url, self._on_takeover = store, self.advertise_url or url, on_takeover
        name = PREFIX + self.replica_id
        loop = asyncio.get_running_loop()
        # A live process with this id: refused once its lease would have run out. A peer taking
        # this id's kernels over (we were gone): waited for.
        began = loop.time()
        while not await store.take_lease(name, self.holder, self.lease_seconds, self.url):
            held = await store.leases(name)
            by_twin = any(le["name"] == name and le["holder"].startswith(self.replica_id + "/") for le in held)
            if loop.time() - began > (self.lease_seconds + 1 if by_twin else 90):
                raise ReplicaIdTaken(f"replica id {self.replica_id!r} is held by a live replica; give this one another")
            await asyncio.sleep(0.5)
        await self._look()
        self._task = asyncio.ensure_future(self._keep())
        # A replica that stops says so at once (NOTIFY): its kernels are taken over now, not at
        # the next look. A killed one cannot: its lease runs out.
        def on_notify() -> None:
            self._takeovers.spawn(self._look())
        await store.listen(CHANNEL, on_notify)

    async def _keep(self) -> None:
        assert self.store is not None
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                if not await self.store.take_lease(PREFIX + self.replica_id, self.holder, self.lease_seconds,
                                                   self.url):
                    # Another replica found us dead (we were stopped too long) and took our kernels.
                    self.log.critical("replica %s lost its lease: its kernels were taken over; exiting",
                                      self.replica_id)
                    os._exit(3)
                await self._look()
            except Exception as e:  # noqa: BLE001 - a store hiccup: try again at the next beat
                self.log.warning("replica lease renewal failed: %s", e)

    async def _look(self) -> None:
        """Learn the live peers; take over each dead one (whoever takes its lease first does)."""
        assert self.store is not None
        if self._leaving:
            return
        peers: dict[str, str] = {}
        for lease in await self.store.leases(PREFIX):
            rid = lease["name"][len(PREFIX):]
            if rid == self.replica_id:
                continue
            if _live_replica(lease):
                peers[rid] = lease["url"]
            elif not lease["live"] and await self.store.take_lease(lease["name"], self.holder, 60.0):
                self._takeovers.spawn(self._take_over(rid, lease["name"]))
        self._peers = peers

    async def _take_over(self, dead: str, lease: str) -> None:
        assert self.store is not None and self._on_takeover is not None
        self.log.warning("replica %s is gone: taking over its kernels and sessions", dead)
        self._taking_over += 1
        self._settled.clear()
        try:
            await self._on_takeover(dead)
        finally:
            self._taking_over -= 1
            if not self._taking_over:
                self._settled.set()
            await self.store.release_lease(lease, self.holder)

    async def settled(self, timeout: float = 15.0) -> None:
        """Until no takeover is under way here (a record moved here may not be adopted yet)."""
        if not self._settled.is_set():
            try:
                await asyncio.wait_for(self._settled.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def unserved(self, peers: Collection[str]) -> list[str]:
        """Replicas other than this one and `peers` that home records and are not live (dead, or
        being taken over): a list asked of this one and `peers` would miss what they served. A live
        one not among `peers` (started since the last look) makes this replica look again."""
        assert self.store is not None
        rows = await self.store.fetch("SELECT DISTINCT home FROM records")
        others = {str(r["home"]) for r in rows} - {self.replica_id, *peers}
        if not others:
            return []
        live = {_live_replica(lease) for lease in await self.store.leases(PREFIX)}
        if others & live:
            await self._look()
        return sorted(others - live)

    async def taken_over(self, replicas: list[str], timeout: float) -> None:
        """Until `replicas` hold no record (a live replica took them over), at most `timeout` s."""
        assert self.store is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        marks = ",".join("?" * len(replicas))
        while loop.time() < deadline:
            row = await self.store.fetchrow(f"SELECT COUNT(*) AS n FROM records WHERE home IN ({marks})", *replicas)
            if not row or not row["n"]:
                await self._look()  # the peers as they are now
                await self.settled()
                return
            await asyncio.sleep(0.25)

    def peers(self) -> dict[str, str]:
        """Live other replicas: id → URL."""
        return dict(self._peers)

    async def url_of(self, replica: str) -> str | None:
        """The URL of live replica `replica`, reading the store (not only the last look)."""
        if self.store is None:
            return None
        for lease in await self.store.leases(PREFIX + replica):
            if _live_replica(lease) == replica:
                return str(lease["url"])
        return None

    async def leave(self) -> None:
        """A stop: end the lease at once, so a live replica takes this one's kernels over now."""
        self._leaving = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await self._takeovers.wait()
        if self.store is not None:
            await self.store.execute("UPDATE leases SET expires = 0 WHERE name = ? AND holder = ?",
                                     PREFIX + self.replica_id, self.holder)
            await self.store.notify(CHANNEL)
