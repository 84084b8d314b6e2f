"""The gateway's store: SQLite for one gateway (the embedded default), PostgreSQL for replicas
sharing one store. One URL option chooses; everything above speaks the same small interface."""
from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from traitlets import Unicode, default

from ..config import EnvConfigurable, env
from .postgres import PostgresDriver, redacted

T = TypeVar("T")


class Statements(Protocol):
    async def execute(self, sql: str, *args: Any) -> int: ...  # rows changed
    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]: ...


class Driver(Statements, Protocol):
    dialect: str

    def transaction(self, lock: str | None = None) -> Any: ...  # async context manager → Statements
    async def listen(self, channel: str, callback: Callable[[], None]) -> None: ...
    async def notify(self, channel: str) -> None: ...
    async def close(self) -> None: ...


def default_state_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "kernel_gateway_ext")


class Store(EnvConfigurable):
    """Where the gateway's state lives."""

    state_dir = env(Unicode(help="Folder for the SQLite database, the master key and the folders."),
                    "KGE_STATE_DIR")
    db_path = env(Unicode(help="SQLite database file (default: STATE_DIR/state.db); unused when "
                               "STORE_URL names a server."), "KGE_DB_PATH")
    url = env(Unicode("", help="The store's database: empty (SQLite at DB_PATH, one gateway), "
                               "sqlite:///PATH, or postgresql://USER:PASSWORD@HOST:PORT/DB (replicas share it; "
                               "needs the [postgres] extra). The password never reaches a log."), "KGE_STORE_URL")

    @default("state_dir")
    def _state_dir_default(self) -> str:
        return default_state_dir()

    @default("db_path")
    def _db_path_default(self) -> str:
        return os.path.join(self.state_dir, "state.db")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._driver: Driver | None = None
        self.home = ""  # this replica's id: records it writes are homed here, and it reads its own
        self._sync_loop: asyncio.AbstractEventLoop | None = None

    @property
    def driver(self) -> Driver:
        if self._driver is None:
            from .sqlite import SQLiteDriver

            url = self.url
            if url.startswith(("postgresql://", "postgres://")):
                self._driver = PostgresDriver(url)
            elif url.startswith("sqlite:///"):
                self._driver = SQLiteDriver(url[len("sqlite://"):])
            elif url:
                raise SystemExit(f"store URL {redacted(url)!r}: use postgresql://… or sqlite:///PATH")
            else:
                self._driver = SQLiteDriver(self.db_path)
        return self._driver

    @property
    def dialect(self) -> str:
        return self.driver.dialect

    @property
    def shared(self) -> bool:
        """Replicas may share this store (a database server)."""
        return self.dialect == "postgresql"

    # ---- statements -------------------------------------------------------------------------------
    async def execute(self, sql: str, *args: Any) -> int:
        return await self.driver.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return await self.driver.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        rows = await self.driver.fetch(sql, *args)
        return rows[0] if rows else None

    @asynccontextmanager
    async def transaction(self, lock: str | None = None) -> AsyncIterator[Statements]:
        async with self.driver.transaction(lock) as tx:
            yield tx

    def run_sync(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn()` on the store's own loop and wait (CLI commands, not the server)."""
        if self._sync_loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="store-sync", daemon=True).start()
            self._sync_loop = loop

        async def call() -> T:
            return await fn()
        return asyncio.run_coroutine_threadsafe(call(), self._sync_loop).result()

    # ---- records that outlive the process ---------------------------------------------------------
    async def put_record(self, kind: str, record_id: str, gateway: str, owner: str, data: dict[str, Any],
                         token: str = "") -> None:
        """Write a record homed at this replica (a takeover moves it: `move_home`)."""
        body, home = json.dumps(data, sort_keys=True), self.home
        await self.execute(
            "INSERT INTO records (kind, id, gateway, owner, data, home, token) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(kind, id) DO UPDATE SET owner = excluded.owner, data = excluded.data, "
            "token = excluded.token",
            kind, record_id, gateway, owner, body, home, token)

    async def delete_record(self, kind: str, record_id: str) -> None:
        await self.execute("DELETE FROM records WHERE kind = ? AND id = ?", kind, record_id)

    async def records(self, kind: str, gateway: str, any_home: bool = False) -> list[dict[str, Any]]:
        """Every record of `kind` kept for `gateway` and homed at this replica (or, `any_home`, at
        any): its data plus id, owner and home."""
        sql = "SELECT id, owner, data, home FROM records WHERE kind = ? AND gateway = ?"
        args: list[Any] = [kind, gateway]
        if not any_home:
            sql += " AND home = ?"
            args.append(self.home)
        rows = await self.fetch(sql, *args)
        return [{**json.loads(r["data"]), "id": r["id"], "owner": r["owner"], "home": r["home"]} for r in rows]

    async def homes_of(self, kind: str, ident: str, by_token: bool = False) -> set[str]:
        """The replicas homing the record `ident` of `kind` (and, `by_token`, those whose client
        token it is: tokens are unique per owner only)."""
        sql = "SELECT home FROM records WHERE kind = ? AND (id = ?" + (" OR token = ?)" if by_token else ")")
        rows = await self.fetch(sql, kind, ident, *((ident,) if by_token else ()))
        return {str(r["home"]) for r in rows}

    async def move_home(self, gateway: str, old: str, new: str) -> int:
        """Every record and claim of replica `old` now belongs to `new` (taking over a dead replica)."""
        await self.execute("UPDATE claims SET home = ? WHERE gateway = ? AND home = ?", new, gateway, old)
        return await self.execute("UPDATE records SET home = ? WHERE gateway = ? AND home = ?", new, gateway, old)

    # ---- claims: one kernel per owner's v2 client token across replicas ---------------------------
    async def claim(self, gateway: str, owner: str, token: str) -> str:
        """The replica that makes (or made) the kernel of `owner`'s `token`: this one if it was free."""
        await self.execute("INSERT INTO claims (gateway, owner, token, home, created) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT DO NOTHING", gateway, owner, token, self.home, time.time())
        row = await self.fetchrow("SELECT home FROM claims WHERE gateway = ? AND owner = ? AND token = ?",
                                  gateway, owner, token)
        return str(row["home"]) if row else self.home

    async def unclaim(self, gateway: str, owner: str, token: str) -> None:
        await self.execute("DELETE FROM claims WHERE gateway = ? AND owner = ? AND token = ? AND home = ?",
                           gateway, owner, token, self.home)

    async def delete_records(self, gateway: str) -> None:
        """Forget this replica's records of `gateway` (a start that adopts nothing)."""
        await self.execute("DELETE FROM records WHERE gateway = ? AND home = ?", gateway, self.home)

    # ---- leases -----------------------------------------------------------------------------------
    async def take_lease(self, name: str, holder: str, ttl: float, url: str = "") -> bool:
        """Take or renew lease `name` for `ttl` seconds: True if `holder` has it now (it was
        free, expired, or already its own)."""
        now = time.time()
        changed = await self.execute(
            "INSERT INTO leases (name, holder, url, expires) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, url = excluded.url, expires = excluded.expires "
            "WHERE leases.holder = excluded.holder OR leases.expires < ?",
            name, holder, url, now + ttl, now)
        return changed > 0

    async def release_lease(self, name: str, holder: str) -> None:
        await self.execute("DELETE FROM leases WHERE name = ? AND holder = ?", name, holder)

    async def leases(self, prefix: str) -> list[dict[str, Any]]:
        rows = await self.fetch("SELECT name, holder, url, expires FROM leases WHERE name LIKE ?", prefix + "%")
        return [{**r, "live": r["expires"] >= time.time()} for r in rows]

    # ---- notifications (PostgreSQL's LISTEN/NOTIFY; nothing with SQLite) --------------------------
    async def listen(self, channel: str, callback: Callable[[], None]) -> None:
        await self.driver.listen(channel, callback)

    async def notify(self, channel: str) -> None:
        await self.driver.notify(channel)

    # ---- closing ----------------------------------------------------------------------------------
    async def aclose(self) -> None:
        if self._driver is not None:
            driver, self._driver = self._driver, None
            await driver.close()

    def close(self) -> None:
        """Close the database (again: nothing happens). From a CLI command; the server awaits aclose."""
        if self._sync_loop is not None:
            self.run_sync(self.aclose)
            self._sync_loop.call_soon_threadsafe(self._sync_loop.stop)
            self._sync_loop = None
