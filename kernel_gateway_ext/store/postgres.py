"""PostgreSQL through asyncpg, for replicas sharing one store. Statements are written with `?`
placeholders (as for SQLite) and numbered here."""
from __future__ import annotations

import asyncio
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from .migrations import MIGRATIONS, statements

_PLACEHOLDER = re.compile(r"\?")
_MIGRATION_LOCK = 0x6B6765  # 'kge': one replica migrates at a time


def numbered(sql: str) -> str:
    n = 0

    def one(_: re.Match[str]) -> str:
        nonlocal n
        n += 1
        return f"${n}"
    return _PLACEHOLDER.sub(one, sql)


def lock_key(name: str) -> int:
    """A transaction advisory lock's 64-bit key for a name."""
    return zlib.crc32(name.encode())


def redacted(url: str) -> str:
    """The URL without its password, for logs and errors."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


class _Statements:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self._conn.execute(numbered(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._conn.fetch(numbered(sql), *args)]


class PostgresDriver:
    dialect = "postgresql"

    def __init__(self, url: str, max_connections: int = 10) -> None:
        self.url = url
        self.max_connections = max_connections
        self._pool: Any = None
        self._opening = asyncio.Lock()
        self._listeners: list[Any] = []

    async def _get_pool(self) -> Any:
        if self._pool is None:
            async with self._opening:  # two first calls at once must not open two pools
                if self._pool is None:
                    self._pool = await self._open()
        return self._pool

    async def _open(self) -> Any:
        import asyncpg  # optional dependency: pip install kernel_gateway_ext[postgres]

        try:
            pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.max_connections,
                                             command_timeout=30, timeout=10)
        except (OSError, asyncpg.PostgresError) as e:
            raise RuntimeError(f"cannot reach the store at {redacted(self.url)}: {e}") from None
        async with pool.acquire() as conn, conn.transaction():
            await _migrate(conn)
        return pool

    async def execute(self, sql: str, *args: Any) -> int:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            return await _Statements(conn).execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            return await _Statements(conn).fetch(sql, *args)

    @asynccontextmanager
    async def transaction(self, lock: str | None = None) -> AsyncIterator[_Statements]:
        """A transaction; with `lock`, first an advisory lock on that name until it ends (what
        two replicas must not do at once, such as counting an owner's folders then adding one)."""
        pool = await self._get_pool()
        async with pool.acquire() as conn, conn.transaction():
            if lock is not None:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(lock))
            yield _Statements(conn)

    async def listen(self, channel: str, callback: Callable[[], None]) -> None:
        """Call `callback()` on each NOTIFY on `channel` (a connection of its own, kept open)."""
        import asyncpg

        await self._get_pool()
        conn = await asyncpg.connect(self.url, timeout=10)
        await conn.add_listener(channel, lambda *_: callback())
        self._listeners.append(conn)

    async def notify(self, channel: str) -> None:
        await self.execute("SELECT pg_notify(?, '')", channel)

    async def close(self) -> None:
        for conn in self._listeners:
            await conn.close()
        self._listeners.clear()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


async def _migrate(conn: Any) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
    await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                       "description TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL)")
    done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    for version, description, sql in MIGRATIONS:
        if version in done:
            continue
        for statement in statements(sql):
            await conn.execute(statement)
        await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, $3)", version, description, time.time())
