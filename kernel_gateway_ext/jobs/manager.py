"""Skaha jobs ("sessions" on the wire): headless containers with requested cores and RAM, the owner's
folders mounted, status from container events, events, logs, and expiry (timers, no polling). Their
wire format is the Skaha dialect's (api/skaha/wire.py); who may see one is the authorizer's to say."""
from __future__ import annotations

import builtins

import asyncio
import functools
from collections import Counter
import json
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any, Protocol

from traitlets import Dict, Float, Instance, Int, List, Unicode

from ..config import EnvConfigurable, env
from ..auth.sealing import Sealer
from ..errors import ContainerFailed, EngineUnavailable, Forbidden
from ..folders import FolderManager
from ..tasks import Deadlines
from ..containers import ContainerBackend, current_backend
from ..containers.backend import Owned
from ..containers.fleet import FLEET
from ..containers.spec import LABEL_KIND, LABEL_OWNER, BindMount, ContainerSpec, FileToPut
from ..replicas.capacity import SharedCapacity
from ..store import Store
from ..tasks import TaskSet

from . import images
from .request import JobRequest, Offer, parse_job_request
from .records import (
    ID_ALPHABET, LABEL_SESSION_ID, LOG_TAIL_LINES, NOTEBOOK_CMD, RECORD_KIND, SEALED,
    STATUS_ALIASES, JobRecord, iso,
)


class MemoryBudget(Protocol):
    def add_claimant(self, promised: Callable[[], int]) -> None: ...

    def check_memory(self, wanted: int) -> None: ...


def session_key(kind: str, owner: str) -> str:
    """The per-owner count a Skaha session of `kind` falls in (headless jobs apart from the rest)."""
    return f"session:{'headless' if kind == 'headless' else 'interactive'}:{owner}"


class JobManager(EnvConfigurable):
    """Skaha jobs ("sessions" on the wire and in the options' names): create, track, expire, adopt."""

    @classmethod
    def section_names(cls) -> list[str]:
        # Configuration written for this class's former name (SessionManager.lifetimes, …) still applies.
        return ["SessionManager", *super().section_names()]

    store = Instance(Store)
    folders = Instance(FolderManager)
    keypairs = Instance("kernel_gateway_ext.auth.keypairs.KeyPairs")
    core_options = env(List(Int(), [1, 2, 4, 8, 16], help="Cores a session may ask for (capped by the host)."),
                       "KGE_SESSION_CORE_OPTIONS")
    ram_options = env(List(Int(), [1, 2, 4, 8, 16, 32, 64], help="RAM (GB) a session may ask for (capped by the host)."),
                      "KGE_SESSION_RAM_OPTIONS")
    default_cores = Int(1, help="Cores of a session that asks for none.").tag(config=True)
    default_ram = Int(4, help="RAM (GB) of a session that asks for none.").tag(config=True)
    max_gpus = env(Int(0, help="Most GPUs a session may ask for (0: this host offers none)."), "KGE_SESSION_MAX_GPUS")
    lifetimes = env(Dict(
        {"headless": 24 * 3600.0, "notebook": 4 * 24 * 3600.0},
        help="Seconds a session of each kind lives (renew pushes expiryTime forward by as much), "
             "e.g. '{\"headless\": 3600, \"notebook\": 86400}'.",
    ), "KGE_SESSION_LIFETIMES")
    default_lifetime = env(Float(24 * 3600.0, help="Seconds a session of a kind not in `lifetimes` lives."),
                           "KGE_SESSION_DEFAULT_LIFETIME")
    image_map = Dict(
        {"images.canfar.net/skaha/terminal:*": "kge-kernel:latest",
         "images.canfar.net/chimefrb/testing:*": "kge-kernel:latest",
         "images.canfar.net/skaha/base:*": "kge-kernel:latest",
         "docker.io/library/python:*": "kge-kernel:latest",
         "python:*": "kge-kernel:latest",
         "kge-kernel:latest": "kge-kernel:latest",
         "images.canfar.net/skaha/notebook:*": "kge-notebook:latest",
         "images.canfar.net/skaha/jupyter:*": "kge-notebook:latest",
         "kge-notebook:latest": "kge-notebook:latest"},
        help="Image names clients send (glob patterns) -> local images.",
    ).tag(config=True)
    user = Unicode("1000:1000", help="uid:gid session containers run as.").tag(config=True)
    base_url = Unicode("/", help="The gateway's URL prefix (set by the app).")
    pids_limit = Int(1024, help="Process limit of a session container.").tag(config=True)
    max_interactive_sessions = env(
        Int(3, help="Interactive (notebook) sessions one owner may have pending or running at once; the "
                    "context advertises it as maxInteractiveSessions. 0: no limit."),
        "KGE_MAX_INTERACTIVE_SESSIONS",
    )
    max_headless_sessions = env(
        Int(32, help="Headless jobs one owner may have pending or running at once. 0: no limit."),
        "KGE_MAX_HEADLESS_SESSIONS",
    )

    def __init__(self, *, budget: MemoryBudget | None = None, on_expire: Callable[[str], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The host's one memory budget, shared with kernels: jobs draw on it too.
        self._budget = budget
        self.shared: SharedCapacity | None = None  # with replicas: capacity across them
        if budget is not None:
            budget.add_claimant(self.promised_memory)
        self._on_expire = on_expire  # (job kind): for metrics
        self.records: dict[str, JobRecord] = {}
        self.deadlines = Deadlines(self.log)  # expiryTime: the same mechanism as kernel culling
        self._tasks = TaskSet(self.log, "session start")
        self._change_callbacks: list[Callable[[], None]] = []

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever a session comes, goes or changes (status, events, expiry)."""
        self._change_callbacks.append(callback)

    def changed(self) -> None:
        for cb in self._change_callbacks:
            cb()

    @property
    def backend(self) -> ContainerBackend:
        return current_backend()

    # ---- what may be asked for ----------------------------------------------------------------
    def host_cores(self) -> int:
        """The most cores one job can have: the host's, or the largest node's of a cluster."""
        return max(1, int(FLEET.largest().cpus))

    def host_ram_gb(self) -> int:
        memory = FLEET.largest().memory
        return int(memory / 2**30) if memory else max(self.ram_options)

    def allowed_cores(self) -> list[int]:
        return [c for c in self.core_options if c <= self.host_cores()] or [1]

    def allowed_ram(self) -> list[int]:
        return [r for r in self.ram_options if r <= self.host_ram_gb()] or [1]

    async def catalogue(self, kind: str | None = None) -> list[dict[str, Any]]:
        return images.catalogue(self.image_map, await images.local_images(self.backend), kind)

    # ---- create -------------------------------------------------------------------------------
    def offer(self) -> Offer:
        return Offer(cores=self.allowed_cores(), ram=self.allowed_ram(), max_gpus=self.max_gpus,
                     default_cores=self.default_cores, default_ram=self.default_ram)

    async def create(self, owner: str, params: dict[str, list[str]]) -> JobRecord:
        await FLEET.refresh(self.backend)
        req = parse_job_request(params, self.offer())
        local_image = images.resolve(self.image_map, await images.local_images(self.backend), req.image, req.kind)
        # Replicas: the per-owner limits and the memory budget hold across them (admitted under a
        # lock in the store).
        pending = None
        if self.shared is not None:
            limit, what = self._owner_limit(req.kind)
            pending = await self.shared.admit(session_key(req.kind, owner), kernels=0, memory=req.ram * 2**30,
                                              owner_limit=(limit, what))
        try:
            rec = self._new_record(owner, req, local_image)
        finally:
            if pending is not None and self.shared is not None:
                self.shared.done(pending)  # the record counts it from now on (no await in between)
        await self._save(rec)
        self._schedule_expiry(rec)
        self._tasks.spawn(self._start(rec))
        return rec

    def _new_record(self, owner: str, req: JobRequest, local_image: str) -> JobRecord:
        """The session's record, in the store's memory at once (the limits count it), or a refusal."""
        kind, image, ram = req.kind, req.image, req.ram
        self._check_owner_limit(owner, kind)  # no await between this and the record going in
        if self._budget is not None:
            self._budget.check_memory(ram * 2**30)  # 429 past the host's memory budget
        now = time.time()
        rec = JobRecord(
            id="".join(secrets.choice(ID_ALPHABET) for _ in range(8)), owner=owner, name=req.name, type=kind,
            image=image, local_image=local_image, cores=req.cores, ram=ram, gpus=req.gpus, cmd=req.cmd, args=req.args,
            env=dict(req.env),
            created=now, expiry=now + self.lifetime(kind),
        )
        rec.event("Normal", "Created", f"session {rec.name} created from {image}")
        self.records[rec.id] = rec
        return rec

    def _owner_limit(self, kind: str) -> tuple[int, str]:
        if kind == "headless":
            return self.max_headless_sessions, "headless jobs"
        return self.max_interactive_sessions, "interactive sessions"

    def active_per_owner(self) -> Counter[str]:
        """Running and pending sessions per `session_key` (what the per-owner limits count)."""
        return Counter(session_key(r.type, r.owner) for r in self.records.values() if r.status in ("Pending", "Running"))

    def _check_owner_limit(self, owner: str, kind: str) -> None:
        limit, what = self._owner_limit(kind)
        if limit and self.active_per_owner()[session_key(kind, owner)] >= limit:
            raise Forbidden(f"{owner} already has the maximum of {limit} {what} running; delete one first")

    def notebook_path(self, session_id: str) -> str:
        return f"{self.base_url}skaha/session/{session_id}/"

    def notebook_token(self, session_id: str) -> str:
        """The session's Jupyter server token: derived from the master key, never stored."""
        return self.keypairs.derive(f"notebook-{session_id}", "jupyter-server")

    def _notebook_config(self, rec: JobRecord) -> FileToPut:
        # The token stays out of the command line (docker inspect shows it); terminals run bash.
        data = json.dumps({"ServerApp": {"token": self.notebook_token(rec.id),
                                         "terminado_settings": {"shell_command": ["/bin/bash", "-l"]}}}).encode()
        return FileToPut("/run/kge", "jupyter_server_config.json", data, 0o400)

    def lifetime(self, kind: str) -> float:
        return float(self.lifetimes.get(kind, self.default_lifetime))

    async def _start(self, rec: JobRecord) -> None:
        backend = self.backend
        try:
            folders = sorted(await self.folders.list(rec.owner), key=lambda f: f["name"])
            limit = self.folders.max_mounts
            if len(folders) > limit:  # each bind mount costs the engine: the same cap as kernels
                rec.event("Warning", "FoldersNotMounted", f"only the first {limit} of {len(folders)} folders are "
                          f"mounted (max_mounts); not: {', '.join(f['name'] for f in folders[limit:])[:500]}")
                folders = folders[:limit]
            command = [rec.cmd, *shlex.split(rec.args or "")] if rec.cmd else None
            if rec.type == "notebook":
                command = NOTEBOOK_CMD + [f"--ServerApp.base_url={self.notebook_path(rec.id)}"]
            spec = ContainerSpec(
                image=rec.local_image, command=command, kind="session",
                labels={LABEL_SESSION_ID: rec.id, LABEL_OWNER: rec.owner},
                env={**rec.env, "HOME": "/home/work", "SKAHA_SESSION_ID": rec.id, "SKAHA_SESSION_NAME": rec.name},
                user=self.user, hostname=f"session-{rec.id}", memory_bytes=rec.ram * 2**30, cpus=float(rec.cores),
                pids=self.pids_limit, gpus=rec.gpus,
                mounts=[BindMount(source=str(self.folders.path_of(f["id"])), target=f"/home/work/{f['name']}")
                        for f in folders],
                # the notebook server's token as a file only its user reads: never in env or inspect
                files=[self._notebook_config(rec)] if rec.type == "notebook" else [],
            )
            created = await backend.create(spec, backend.call_timeout)
            if rec.status == "Terminating" or rec.id not in self.records:
                await backend.discard(created)
                return
            rec.container_id = created
            self.backend.subscribe(rec.container_id, functools.partial(self._on_event, rec))
            await backend.start(created, backend.call_timeout, spec.image)
            rec.ip = await backend.address(created, required=False) or None
        except (ContainerFailed, EngineUnavailable) as e:
            rec.status = "Error"
            rec.event("Warning", "Failed", f"the container could not start: {getattr(e, 'detail', e.message)}")
            if rec.container_id:
                await backend.discard(rec.container_id)
                rec.container_id = None
        await self._save(rec)

    def _on_event(self, rec: JobRecord, event: dict[str, Any]) -> None:
        action = event.get("Action") or event.get("status") or ""
        if rec.status == "Terminating":
            return
        if action == "start":
            rec.status, rec.start_time = "Running", time.time()
            rec.event("Normal", "Started", "container started")
        elif action == "oom":
            rec.event("Warning", "OOMKilled", f"out of memory (limit {rec.ram}G)")
        elif action == "die":
            attrs = (event.get("Actor") or {}).get("Attributes") or {}
            code = int(attrs.get("exitCode", "-1") or -1)
            rec.exit_code = code
            rec.status = "Succeeded" if code == 0 else "Error"
            rec.event("Normal" if code == 0 else "Warning", "Exited", f"exited with code {code}")
            if self.shared is not None:  # it no longer counts against its owner or the budget
                self.shared.sync_soon()
        else:
            return
        asyncio.ensure_future(self._save(rec))

    def promised_memory(self) -> int:
        """Bytes promised to sessions that hold memory (pending or running)."""
        return sum(r.ram * 2**30 for r in self.records.values() if r.status in ("Pending", "Running"))

    # ---- read ---------------------------------------------------------------------------------
    def find(self, job_id: str) -> JobRecord | None:
        """A job by id, whoever owns it (who may see it is the authorizer's to say)."""
        return self.records.get(job_id)

    def list(self, kind: str = "", status: str = "") -> list[JobRecord]:  # noqa: A003
        want = STATUS_ALIASES.get(status.lower(), status) if status else None
        return [r for r in self.records.values() if (not kind or r.type == kind) and (not want or r.status == want)]

    async def usage(self, rec: JobRecord) -> tuple[str, str]:
        """Live RAM and CPU in use, from the container's stats."""
        if rec.status != "Running" or rec.container_id is None:
            return "<none>", "<none>"
        use = await self.backend.usage(rec.container_id, self.host_cores())
        return f"{use.memory / 2**30:.3f}G", f"{use.cores:.3f}"

    def node_of(self, rec: JobRecord) -> str:
        return self.backend.node_of(rec.container_id) if rec.container_id else ""

    async def logs(self, rec: JobRecord) -> str:
        if rec.container_id is None:
            return ""
        # The last lines only: a log holds up to two files of log_max_size.
        return await self.backend.logs(rec.container_id, LOG_TAIL_LINES)

    # ---- change -------------------------------------------------------------------------------
    async def renew(self, rec: JobRecord) -> None:
        rec.expiry = time.time() + self.lifetime(rec.type)
        rec.event("Normal", "Renewed", f"expires {iso(rec.expiry)}")
        self._schedule_expiry(rec)
        await self._save(rec)

    async def delete(self, rec: JobRecord, reason: str = "deleted") -> None:
        rec.status = "Terminating"
        self.deadlines.cancel(rec.id)
        if rec.container_id is not None:
            self.backend.unsubscribe(rec.container_id)
            await self.backend.remove(rec.container_id)
        self.records.pop(rec.id, None)
        self.changed()
        if self.shared is not None:
            self.shared.sync_soon()
        await self.store.delete_record(RECORD_KIND, rec.id)
        self.log.info("Session %s %s", rec.id, reason)

    def _schedule_expiry(self, rec: JobRecord) -> None:
        self.deadlines.arm(rec.id, rec.expiry, lambda: self._expire(rec.id))

    async def _expire(self, session_id: str) -> None:
        rec = self.records.get(session_id)
        if rec is None:
            return
        if rec.expiry > time.time() + 0.5:
            self._schedule_expiry(rec)  # renewed meanwhile
            return
        if self._on_expire is not None:
            self._on_expire(rec.type)
        await self.delete(rec, "expired")

    @functools.cached_property
    def _env_sealer(self) -> Sealer:
        return Sealer(self.keypairs.master, "skaha-session-env")

    async def _save(self, rec: JobRecord) -> None:
        if rec.id not in self.records:
            return
        self.changed()
        data = {k: v for k, v in asdict(rec).items() if k not in ("id", "owner")}
        # The job's env (often tokens) is kept sealed: a dump of the store reveals no value.
        data["env"] = {SEALED: self._env_sealer.seal(rec.env)} if rec.env else {}
        await self.store.put_record(RECORD_KIND, rec.id, self.backend.gateway_id, rec.owner, data)

    def _unsealed(self, data: dict[str, Any]) -> dict[str, Any]:
        env_ = data.get("env") or {}
        if SEALED in env_:
            try:
                env_ = self._env_sealer.open(env_[SEALED])
            except ValueError as e:
                self.log.warning("Session %s: its env cannot be unsealed (%s); starting it without", data.get("id"), e)
                env_ = {}
        return {**data, "env": env_}

    # ---- lifecycle ----------------------------------------------------------------------------
    async def adopt(self, containers: builtins.list[Owned]) -> set[str]:
        """Take over the sessions an earlier process of this gateway id left: their records come
        back with the same ids and owners, status from the container, expiry timers re-armed.
        Returns the container ids adopted; a record whose container is gone is dropped."""
        # By the session-id label, not the record's container id: a gateway killed between
        # creating the container and recording its id must still find it.
        by_session = {c.labels.get(LABEL_SESSION_ID): c for c in containers if c.labels.get(LABEL_KIND) == "session"}
        names = {f.name for f in fields(JobRecord)}
        adopted: set[str] = set()
        for data in await self.store.records(RECORD_KIND, self.backend.gateway_id):
            if data["id"] in self.records:
                continue  # already served here (a takeover adopts only the dead replica's)
            rec = JobRecord(**{k: v for k, v in self._unsealed(data).items() if k in names})
            container = by_session.get(rec.id)
            state = (await self.backend.state(container.id) or {}) if container is not None else {}
            if rec.status == "Terminating" or (container is None and rec.status != "Pending"):
                # Being deleted, or its container was removed from outside: finish that.
                await self.store.delete_record(RECORD_KIND, rec.id)
                continue
            if container is None or state.get("Status") == "created":
                # The gateway died mid-start: start it again from the record (the half-made
                # container, not adopted, is removed by the caller).
                rec.container_id, rec.status = None, "Pending"
                self.records[rec.id] = rec
                self._schedule_expiry(rec)
                self._tasks.spawn(self._start(rec))
                continue
            rec.container_id = container.id
            self.records[rec.id] = rec
            adopted.add(container.id)
            self.backend.subscribe(container.id, functools.partial(self._on_event, rec))
            if state.get("Running"):
                rec.status = "Running"
            else:
                rec.exit_code = int(state.get("ExitCode", -1))
                rec.status = "Succeeded" if rec.exit_code == 0 else "Error"
                if state.get("OOMKilled"):
                    rec.event("Warning", "OOMKilled", f"out of memory (limit {rec.ram}G)")
            rec.event("Normal", "Adopted", "the gateway restarted and took the session over")
            await self._save(rec)
            self._schedule_expiry(rec)
            self.log.info("Session adopted: %s (%s) of %s, %s", rec.id, rec.type, rec.owner, rec.status)
        return adopted

    async def refresh(self) -> None:
        """Re-read every session's container (the event stream was away: events may be missed)."""
        for rec in list(self.records.values()):
            if rec.container_id is None or rec.status not in ("Pending", "Running"):
                continue
            try:
                found = await self.backend.state(rec.container_id)
            except EngineUnavailable:
                continue
            state = found if found is not None else {"Running": False, "ExitCode": -1}
            if state.get("Running"):
                if rec.status != "Running":
                    self._on_event(rec, {"Action": "start"})
            else:
                if state.get("OOMKilled"):
                    self._on_event(rec, {"Action": "oom"})
                self._on_event(rec, {"Action": "die", "Actor": {"Attributes": {"exitCode": str(state.get("ExitCode", -1))}}})

    async def shutdown(self, keep: bool = False) -> None:
        """Gateway exit: every session container goes (nothing may stay behind), unless `keep`,
        when containers and records stay for the next process to adopt."""
        await self.deadlines.close()
        # Starts in flight create containers: let them land first, so none is created after.
        await self._tasks.wait()
        for rec in list(self.records.values()):
            if keep and rec.container_id is not None:
                self.backend.unsubscribe(rec.container_id)
                continue
            try:
                await self.delete(rec, "stopped with the gateway")
            except Exception as e:  # noqa: BLE001 - best effort for each
                self.log.warning("Session %s: cleanup incomplete: %s", rec.id, e)
