"""One live gateway per gateway id: a lock in the state folder and a lease on the engine.

A second gateway started with the id of a live one would adopt or remove the first one's
containers. Two guards, because two gateways may share a state folder, or an engine but not the
folder (other hosts):

- the state folder: an exclusive `flock` on `locks/<id>.lock` (the kernel drops it when the
  holder dies, even by SIGKILL);
- the engine: a tiny container named `kge-lease-<id>` whose only process reads its stdin, which
  the holder keeps attached (`StdinOnce`). When the holder dies, its socket closes, the process
  sees end-of-file and exits, and the engine removes the container (`AutoRemove`): a lease that
  frees itself with no heartbeat and no polling. Its name makes taking it atomic (409 otherwise).
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time
from typing import IO, Any

import docker.errors

from ..errors import ContainerMissing, EngineError
from .engine import DockerEngine
from .spec import LABEL_MANAGED

LABEL_LEASE = "org.kge.lease"  # the gateway id; deliberately not LABEL_GATEWAY (never adopted or reaped)


# What the engine (20.10, runc) answers when its start of an attached container races with the
# container's own state: it ended first ("cannot start a stopped process", "container process is
# already dead"), or the start was already under way ("cannot start an already running container").
# Each seen in CI about once in 100 starts; each is answered by taking the lease anew.
START_RACES = ("stopped process", "already dead", "already running")


class GatewayIdTaken(SystemExit):
    """Another live gateway holds this id."""


class LeaseNotStarted(Exception):
    """The lease container's start lost a race inside the engine (START_RACES): remove it, take it anew."""


class StateLock:
    """`flock` on STATE_DIR/locks/<id>.lock, held for the life of the process."""

    def __init__(self, state_dir: str, gateway_id: str) -> None:
        folder = os.path.join(state_dir, "locks")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        self.path = os.path.join(folder, f"{gateway_id}.lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise GatewayIdTaken(f"this gateway id is in use by a live gateway of this state folder ({holder}, "
                                 f"lock {self.path}); give this one another --gateway-id") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


class EngineLease:
    """The `kge-lease-<id>` container: running while its holder lives."""

    wait_for_previous = 5.0  # seconds a just-killed holder's lease may take to go away

    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine
        self.image = engine.lease_image
        self.name = f"kge-lease-{engine.gateway_id}"
        self._stdin: Any = None  # the attached socket: closing it (or dying) ends the lease
        self.container_id: str | None = None

    async def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_for_previous
        while True:
            try:
                await self.engine.run(self._take, method="lease")
                return
            except LeaseNotStarted as e:
                if time.monotonic() > deadline:
                    raise
                # seen about once in 100 starts (START_RACES): take it anew
                self.engine.log.warning("The lease container's start lost a race in the engine (%s): taking it anew", e)
                continue
            except EngineError as e:
                if e.status_code != 409:
                    raise
            if time.monotonic() > deadline:
                holder = await self._holder()
                raise GatewayIdTaken(
                    f"gateway id {self.engine.gateway_id!r} is held on this Docker engine by a live gateway "
                    f"({holder}); give this one another --gateway-id (containers are told apart by it)")
            await asyncio.sleep(0.2)

    def _take(self) -> None:
        api = self.engine.client.api
        labels = {LABEL_MANAGED: "true", LABEL_LEASE: self.engine.gateway_id,
                  "org.kge.lease.holder": f"pid {os.getpid()} on {socket.gethostname()}",
                  "org.kge.lease.since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        host_config = api.create_host_config(
            auto_remove=True, network_mode="none", read_only=True, cap_drop=["ALL"],
            security_opt=["no-new-privileges"], mem_limit="16m", pids_limit=4, log_config=self.engine.log_config())
        created = api.create_container(self.image, command=["cat"], name=self.name, labels=labels, user="65534",
                                       stdin_open=True, host_config=host_config,  # not detached: StdinOnce
                                       network_disabled=True)
        cid = created["Id"]
        try:
            # Attach before start: the lease lives exactly as long as this socket.
            self._stdin = api.attach_socket(cid, params={"stdin": 1, "stream": 1})
            api.start(cid)
        except Exception as e:
            self._close_socket()
            with contextlib.suppress(docker.errors.NotFound):  # AutoRemove may have been first
                api.remove_container(cid, force=True)
            if isinstance(e, docker.errors.APIError) and any(s in str(e) for s in START_RACES):
                raise LeaseNotStarted(str(e)) from e
            raise
        self.container_id = cid

    async def _holder(self) -> str:
        try:
            info = await self.engine.api("inspect_container", self.name)
        except ContainerMissing:
            return "it has just gone: try again"
        labels = (info.get("Config") or {}).get("Labels") or {}
        return f"{labels.get('org.kge.lease.holder', 'unknown')}, since {labels.get('org.kge.lease.since', '?')}"

    def _close_socket(self) -> None:
        sock, self._stdin = self._stdin, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    async def renew_after_reconnect(self) -> None:
        """After the engine restarted, the lease container is gone with our socket: take it again."""
        self._close_socket()
        self.container_id = None
        await self.acquire()

    async def release(self) -> None:
        cid, self.container_id = self.container_id, None
        self._close_socket()
        if cid is not None:
            await self.engine.remove(cid)
