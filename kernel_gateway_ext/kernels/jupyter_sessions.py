"""Jupyter's /api/sessions records (a named path bound to a kernel), kept in the store so that
they outlive a gateway restart together with their kernels."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..store import Store
from ..tasks import TaskSet

RECORD_KIND = "jupyter-session"


@dataclass
class JupyterSession:
    id: str
    owner: str
    path: str
    name: str
    type: str
    kernel_id: str
    extra: dict[str, Any] = field(default_factory=dict)


class JupyterSessions:
    """The sessions of one gateway id; every change is written through to the store."""

    def __init__(self, store: Store | None, gateway_id: str) -> None:
        self.store = store
        self.gateway_id = gateway_id
        self._sessions: dict[str, JupyterSession] = {}
        self._tasks = TaskSet(None, "session record write")

    def get(self, session_id: str) -> JupyterSession | None:
        return self._sessions.get(session_id)

    def values(self) -> list[JupyterSession]:
        return list(self._sessions.values())

    async def save(self, s: JupyterSession) -> None:
        self._sessions[s.id] = s
        if self.store is not None:
            data = {k: v for k, v in asdict(s).items() if k not in ("id", "owner")}
            await self.store.put_record(RECORD_KIND, s.id, self.gateway_id, s.owner, data)

    async def remove(self, session_id: str) -> None:
        if self._sessions.pop(session_id, None) is not None and self.store is not None:
            await self.store.delete_record(RECORD_KIND, session_id)

    def kernel_removed(self, kernel_id: str) -> None:
        """A kernel left the store: so do the sessions bound to it."""
        for s in [s for s in self._sessions.values() if s.kernel_id == kernel_id]:
            self._tasks.spawn(self.remove(s.id))

    async def flush(self) -> None:
        await self._tasks.wait()

    async def load(self, kernel_ids: set[str]) -> None:
        """Read the records an earlier process left; those whose kernel is gone are dropped."""
        if self.store is None:
            return
        names = {f.name for f in fields(JupyterSession)}
        for rec in await self.store.records(RECORD_KIND, self.gateway_id):
            s = JupyterSession(**{k: v for k, v in rec.items() if k in names})
            if s.id in self._sessions:
                continue
            if s.kernel_id in kernel_ids:
                self._sessions[s.id] = s
            else:
                await self.store.delete_record(RECORD_KIND, s.id)
