"""A small SQLite store. All statements run on one dedicated thread, off the event loop."""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from traitlets import Unicode, default

from ..config import EnvConfigurable, env

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS keypairs (
    access_key TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    is_admin INTEGER NOT NULL DEFAULT 0,
    nonce TEXT NOT NULL,           -- the secret is derived from the master key and this; never stored
    created REAL NOT NULL,
    revoked REAL
);
-- What must outlive the gateway process: kernels, Jupyter sessions and Skaha sessions, each
-- under the gateway id whose containers carry it (gateways may share one state folder).
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,             -- 'kernel', 'jupyter-session', 'skaha-session'
    id TEXT NOT NULL,
    gateway TEXT NOT NULL,
    owner TEXT NOT NULL,
    data TEXT NOT NULL,             -- the record as JSON (never a secret)
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS folders (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (owner, name)
);
"""


def default_state_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "kernel_gateway_ext")


class Store(EnvConfigurable):
    """Where the gateway's state lives."""

    state_dir = env(Unicode(help="Folder for the database and the master key."), "KGE_STATE_DIR")
    db_path = env(Unicode(help="SQLite database file (default: STATE_DIR/state.db)."), "KGE_DB_PATH")

    @default("state_dir")
    def _state_dir_default(self) -> str:
        return default_state_dir()

    @default("db_path")
    def _db_path_default(self) -> str:
        return os.path.join(self.state_dir, "state.db")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            Path(self.db_path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(SCHEMA)
            os.chmod(self.db_path, 0o600)
            self._conn = conn
        return self._conn

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on the store thread and wait (for CLI commands, not the server)."""
        return self._pool.submit(lambda: fn(self._connect())).result()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._connect()))

    # ---- records that outlive the process ---------------------------------------------------------
    async def put_record(self, kind: str, record_id: str, gateway: str, owner: str, data: dict[str, Any]) -> None:
        body = json.dumps(data, sort_keys=True)
        await self.run(lambda c: c.execute(
            "INSERT INTO records (kind, id, gateway, owner, data) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(kind, id) DO UPDATE SET owner = excluded.owner, data = excluded.data",
            (kind, record_id, gateway, owner, body)))

    async def delete_record(self, kind: str, record_id: str) -> None:
        await self.run(lambda c: c.execute("DELETE FROM records WHERE kind = ? AND id = ?", (kind, record_id)))

    async def records(self, kind: str, gateway: str) -> list[dict[str, Any]]:
        """Every record of `kind` kept for `gateway`: its data plus id and owner."""
        rows = await self.run(lambda c: c.execute(
            "SELECT id, owner, data FROM records WHERE kind = ? AND gateway = ?", (kind, gateway)).fetchall())
        return [{**json.loads(r["data"]), "id": r["id"], "owner": r["owner"]} for r in rows]

    async def delete_records(self, gateway: str) -> None:
        await self.run(lambda c: c.execute("DELETE FROM records WHERE gateway = ?", (gateway,)))

    async def count_records(self, gateway: str | None = None) -> int:
        sql, args = ("SELECT COUNT(*) FROM records", ()) if gateway is None else \
            ("SELECT COUNT(*) FROM records WHERE gateway = ?", (gateway,))
        return int(await self.run(lambda c: c.execute(sql, args).fetchone()[0]))

    def close(self) -> None:
        """Close the database (again: nothing happens)."""
        if self._pool._shutdown:
            return

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._pool.submit(_close).result()
        self._pool.shutdown(wait=True)
