"""SQLite, the embedded default for one gateway: every statement on one dedicated thread."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from .migrations import MIGRATIONS, statements

T = TypeVar("T")


class _Statements:
    """Statements on the driver's connection, as they come (inside a transaction: its own)."""

    def __init__(self, run: Callable[[Callable[[sqlite3.Connection], Any]], Any]) -> None:
        self._run = run

    async def execute(self, sql: str, *args: Any) -> int:
        return int(await self._run(lambda c: c.execute(sql, args).rowcount))

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._run(lambda c: [dict(r) for r in c.execute(sql, args).fetchall()])
        return rows


class SQLiteDriver:
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._conn: sqlite3.Connection | None = None
        # One connection: a transaction's statements and others' must not interleave on it.
        self._lock = asyncio.Lock()
        self._raw = _Statements(self._run)

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=5000")
            os.chmod(self.path, 0o600)
            _migrate(conn)
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(self._connect()))

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._lock:
            return await self._raw.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async with self._lock:
            return await self._raw.fetch(sql, *args)

    @asynccontextmanager
    async def transaction(self, lock: str | None = None) -> AsyncIterator[_Statements]:
        """BEGIN IMMEDIATE: the write lock on the file from the start (other processes wait)."""
        del lock  # the whole database is the lock
        async with self._lock:
            await self._run(lambda c: c.execute("BEGIN IMMEDIATE"))
            try:
                yield self._raw
            except BaseException:
                await self._run(lambda c: c.execute("ROLLBACK"))
                raise
            await self._run(lambda c: c.execute("COMMIT"))

    async def listen(self, channel: str, callback: Callable[[], None]) -> None:
        """No notifications in SQLite (one gateway): listeners rely on their own timers."""

    async def notify(self, channel: str) -> None:
        pass

    async def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        await asyncio.get_running_loop().run_in_executor(self._pool, _close)
        self._pool.shutdown(wait=True)


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                     "description TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL)")
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, description, sql in MIGRATIONS:
            if version in done:
                continue
            for statement in statements(sql):
                try:
                    conn.execute(statement)
                except sqlite3.OperationalError as e:
                    if "duplicate column" not in str(e):  # a database made before migrations existed
                        raise
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, description, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
