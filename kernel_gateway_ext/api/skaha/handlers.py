"""/skaha/v0|v1/session, image, context; /skaha/availability and /skaha/capabilities."""
from __future__ import annotations

import asyncio
from ...errors import BadRequest, NotFound
from ...jobs import JobManager
from ...jobs.records import JobRecord
from ..base import BaseHandler
from .wire import context, events_table, session_model

SESSION_ID = r"(?P<session_id>[a-z0-9]{1,32})"
VERSION = r"(?P<version>v0|v1)"


class SkahaHandler(BaseHandler):
    """Bearer-token auth (any X-Skaha-Authentication-Type); errors as short plain text."""

    def error_response(self, status: int, message: str, kind: str) -> tuple[str, bytes]:
        return "text/plain; charset=utf-8", (message + "\n").encode()

    def params(self) -> dict[str, list[str]]:
        """Query string and form body alike (the clients send the query string)."""
        return {k: [v.decode(errors="replace") for v in vs] for k, vs in self.request.arguments.items()}

    @property
    def jobs(self) -> JobManager:
        return self.gateway.jobs

    def job(self, session_id: str, action: str = "read") -> JobRecord:
        """The caller's job (a session on the wire), or a 404 whoever owns it."""
        return self.authorized(self.jobs.find(session_id), lambda: NotFound(f"session {session_id!r} not found"), action)

    @property
    def external_base(self) -> str:
        return f"{self.request.protocol}://{self.request.host}/"


class SessionsHandler(SkahaHandler):
    async def get(self, version: str) -> None:
        p = self.params()
        view = (p.get("view") or [""])[-1]
        # The other replicas' parts first: a takeover it waits for may bring sessions here.
        others = await self.from_peers() if view != "stats" else []
        if view == "all":
            # Everyone's sessions (who runs what) are for operators; a user sees their own.
            recs = self.visible(self.jobs.list())
            self.write_json([{"userid": r.owner, "type": r.type, "status": r.status,
                              "startTime": (await session_model(self.jobs, r, self.external_base))["startTime"]} for r in recs]
                            + others)
            return
        recs = self.visible(self.jobs.list((p.get("type") or [""])[-1], (p.get("status") or [""])[-1]))
        if view == "stats":
            all_recs = self.jobs.list()
            running = [r for r in all_recs if r.status in ("Pending", "Running")]
            self.write_json({
                "instances": {"session": len(running), "desktopApp": 0,
                              "headless": sum(1 for r in running if r.type == "headless"), "total": len(running)},
                "cores": {"requestedCPUCores": sum(r.cores for r in running),
                          "cpuCoresAvailable": self.jobs.host_cores()},
                "ram": {"requestedRAM": f"{sum(r.ram for r in running)}G", "ramAvailable": f"{self.jobs.host_ram_gb()}G"},
            })
            return
        models = await asyncio.gather(*(session_model(self.jobs, r, self.external_base) for r in recs))
        self.write_json(list(models) + others)

    async def post(self, version: str) -> None:
        rec = await self.jobs.create(self.identity.user, self.params())
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(rec.id + "\n")


class SessionHandler(SkahaHandler):
    record_kind = "skaha-session"
    async def get(self, version: str, session_id: str) -> None:
        rec = self.job(session_id)
        view = self.get_query_argument("view", "")
        if view == "logs":
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(await self.jobs.logs(rec))
        elif view == "events":
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(events_table(rec))
        else:
            self.write_json(await session_model(self.jobs, rec, self.external_base))

    async def post(self, version: str, session_id: str) -> None:
        rec = self.job(session_id, "write")
        action = self.get_argument("action", "")
        if action != "renew":
            raise BadRequest(f"unknown action {action!r}; supported: renew")
        await self.jobs.renew(rec)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(rec.id + "\n")

    async def delete(self, version: str, session_id: str) -> None:
        rec = self.job(session_id, "write")
        await self.jobs.delete(rec)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("")


class ImagesHandler(SkahaHandler):
    async def get(self, version: str) -> None:
        kind = self.get_query_argument("type", None)
        self.write_json(await self.jobs.catalogue(kind))


class ContextHandler(SkahaHandler):
    def get(self, version: str) -> None:
        self.write_json(context(self.jobs))


AVAILABILITY = """<?xml version="1.0" encoding="UTF-8"?>
<vosi:availability xmlns:vosi="http://www.ivoa.net/xml/VOSIAvailability/v1.0">
  <vosi:available>true</vosi:available>
  <vosi:note>kernel_gateway_ext skaha sessions are accepting requests</vosi:note>
</vosi:availability>
"""

CAPABILITIES = """<?xml version="1.0" encoding="UTF-8"?>
<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0"
    xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <capability standardID="ivo://ivoa.net/std/VOSI#capabilities">
    <interface xsi:type="vs:ParamHTTP" role="std"><accessURL use="full">{base}skaha/capabilities</accessURL></interface>
  </capability>
  <capability standardID="ivo://ivoa.net/std/VOSI#availability">
    <interface xsi:type="vs:ParamHTTP" role="std"><accessURL use="full">{base}skaha/availability</accessURL></interface>
  </capability>
  <capability standardID="http://www.opencadc.org/std/platform#session-1">
    <interface xsi:type="vs:ParamHTTP" role="std" version="1.0"><accessURL use="base">{base}skaha/v1</accessURL>
      <securityMethod standardID="ivo://ivoa.net/sso#token"/>
      <securityMethod standardID="ivo://ivoa.net/sso#tls-with-certificate"/>
    </interface>
  </capability>
  <capability standardID="vos://cadc.nrc.ca~vospace/CADC/std/Proc#sessions-1.0">
    <interface xsi:type="vs:ParamHTTP" role="std" version="1.0"><accessURL use="base">{base}skaha/v1</accessURL></interface>
  </capability>
  <capability standardID="vos://cadc.nrc.ca~vospace/CADC/std/Proc#sessions-0.1">
    <interface xsi:type="vs:ParamHTTP" role="std" version="0.1"><accessURL use="base">{base}skaha/v0</accessURL></interface>
  </capability>
</vosi:capabilities>
"""


class VosiHandler(BaseHandler):
    auth_required = False

    def get(self, what: str) -> None:
        self.set_header("Content-Type", "text/xml; charset=utf-8")
        base = f"{self.request.protocol}://{self.request.host}{self.gateway.base_url}"
        self.finish((AVAILABILITY if what == "availability" else CAPABILITIES).replace("{base}", base))



