"""/api/sessions as jupyter_server defines it: a named path bound to a kernel."""
from __future__ import annotations

import uuid
from typing import Any

from ...errors import BadRequest, KernelNotFound, NotFound
from ...kernels.jupyter_sessions import JupyterSession, JupyterSessions
from ..base import BaseHandler
from .handlers import _env_from_body

SESSION_ID = r"(?P<session_id>[\w-]+)"


class SessionsMixin(BaseHandler):
    @property
    def sessions(self) -> JupyterSessions:
        return self.gateway.jupyter_sessions

    def model(self, s: JupyterSession) -> dict[str, Any] | None:
        try:
            km = self.gateway.kernel_manager.get(s.kernel_id)
        except KernelNotFound:
            return None  # its kernel is gone: the session goes with it (JupyterSessions.kernel_removed)
        return {
            "id": s.id,
            "path": s.path,
            "name": s.name,
            "type": s.type,
            "kernel": km.model(),
            "notebook": {"path": s.path, "name": s.name},
        }

    def lookup(self, session_id: str) -> JupyterSession:
        def missing() -> NotFound:
            return NotFound(f"Session not found: {session_id}")

        s = self.authorized(self.sessions.get(session_id), missing)
        if self.model(s) is None:
            raise missing()
        return s

    def fields(self, body: dict[str, Any]) -> dict[str, str]:
        out = {}
        for key in ("path", "name", "type"):
            value = body.get(key)
            if key == "path" and value is None:
                value = (body.get("notebook") or {}).get("path") if isinstance(body.get("notebook"), dict) else None
            if value is not None:
                if not isinstance(value, str):
                    raise BadRequest(f"{key!r} must be a string")
                out[key] = value
        return out

    async def kernel_for(self, body: dict[str, Any]) -> str:
        spec = body.get("kernel") or {}
        if not isinstance(spec, dict):
            raise BadRequest("'kernel' must be an object")
        mgr = self.gateway.kernel_manager
        if spec.get("id"):
            return self.owned_kernel(str(spec["id"]), action="execute").kernel_id
        name = spec.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRequest("'kernel.name' must be a string")
        km = await mgr.start(owner=self.identity.user, kernel_name=name or None, env=_env_from_body(spec))
        return km.kernel_id


class SessionsHandler(SessionsMixin):
    async def get(self) -> None:
        others = await self.from_peers()  # first: a takeover it waits for may bring sessions here
        models = [self.model(s) for s in self.visible(self.sessions.values())]
        self.write_json([m for m in models if m is not None] + others)

    async def post(self) -> None:
        body = self.json_body()
        f = self.fields(body)
        path = f.get("path", "")
        for s in self.visible(self.sessions.values()):
            if path and s.path == path and self.model(s) is not None:
                self.write_json(self.model(s), status=201)  # jupyter_server returns the existing one
                return
        kernel_id = await self.kernel_for(body)
        s = JupyterSession(
            id=str(uuid.uuid4()), owner=self.identity.user, path=path,
            name=f.get("name", ""), type=f.get("type", "notebook"), kernel_id=kernel_id,
        )
        await self.sessions.save(s)
        self.set_header("Location", f"{self.gateway.base_url}api/sessions/{s.id}")
        self.write_json(self.model(s), status=201)


class SessionHandler(SessionsMixin):
    record_kind = "jupyter-session"
    def get(self, session_id: str) -> None:
        self.write_json(self.model(self.lookup(session_id)))

    async def patch(self, session_id: str) -> None:
        s = self.lookup(session_id)
        body = self.json_body()
        for key, value in self.fields(body).items():
            setattr(s, key, value)
        if body.get("kernel"):
            old = s.kernel_id
            s.kernel_id = await self.kernel_for(body)
            if old != s.kernel_id and not any(o.kernel_id == old for o in self.sessions.values() if o is not s):
                await self.gateway.kernel_manager.shutdown(old)
        await self.sessions.save(s)
        self.write_json(self.model(s))

    async def delete(self, session_id: str) -> None:
        s = self.lookup(session_id)
        await self.sessions.remove(s.id)
        try:
            await self.gateway.kernel_manager.shutdown(s.kernel_id)
        except KernelNotFound:
            pass
        self.set_status(204)
        self.finish()
