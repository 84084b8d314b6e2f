"""Containers made from a ContainerSpec: launched hardened, measured, read from and removed.

`ContainerRuntime` is the Docker implementation of the container backend (backend.py): the
provisioner (kernels) and the Skaha job manager both go through it; only this layer speaks
docker-py, and a Docker error becomes one of errors.py's here, once.
"""
from __future__ import annotations

import asyncio
import io
import os
import socket
import tarfile
import time
from collections.abc import Callable
from typing import Any

import docker.types

from ..errors import ContainerFailed, ContainerMissing, EngineError, EngineUnavailable, ImageMissing
from .backend import EventCallback, Node, Owned, Usage
from ..tasks import TaskSet
from .cgroups import LimitRefused, read_usage, write_limits
from .diskuse import DiskUse
from .limits import host_memory
from .engine import DockerEngine
from .ipc import IpcFolders
from .mounter import MountHelper, supported as mounter_supported
from .spec import LABEL_KIND, BindMount, ContainerSpec
from .streams import LogStream, Tty


def address_of(info: dict[str, Any]) -> str:
    nets = (info.get("NetworkSettings") or {}).get("Networks") or {}
    return next((n.get("IPAddress") for n in nets.values() if n.get("IPAddress")), "") or ""


def first_process(info: dict[str, Any], container_id: str) -> tuple[int, str]:
    """(the host pid of the container's first process, 0 when it runs none; its full id) from an
    inspect: what the cgroup files and the mount helper are found by."""
    return int((info.get("State") or {}).get("Pid") or 0), str(info.get("Id") or container_id)


# The engine's record of limits written into a cgroup is updated this long after: its update call
# stalls the container's processes while it runs (measured: a pooled kernel's first reply took
# ~10 ms longer alone, ~16 ms under load, when the update ran with it; none when it came later).
RECORD_DELAY = 1.0


class ContainerRuntime:
    """Operations on our containers, over the process's one engine connection (a ContainerBackend)."""

    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine
        self._behind = TaskSet(engine.log, "update of the engine's record of a container's limits")
        # container → (its record's update under way or failed, the update): see start_again
        self._records_behind: dict[str, tuple[asyncio.Future[Any], dict[str, Any]]] = {}
        self.ipc_folders: IpcFolders | None = None  # set by ensure_network when kernels go without a network
        self.disk = DiskUse(engine)  # what its containers write to this host's disk

    @property
    def gateway_id(self) -> str:
        return str(self.engine.gateway_id)

    @property
    def call_timeout(self) -> float:
        return float(self.engine.call_timeout)

    files_read_only = False  # put into the container's own filesystem
    takes_stdin = True

    # The engine's own: one event stream, removal, the image list.
    def subscribe(self, container_id: str, callback: EventCallback) -> None:
        self.engine.subscribe(container_id, callback)

    def unsubscribe(self, container_id: str, callback: EventCallback | None = None) -> None:
        self.engine.unsubscribe(container_id, callback)

    def on_reconnect(self, callback: Callable[[], object], container_id: str | None = None) -> None:
        self.engine.on_reconnect(callback, container_id)

    async def remove(self, container_id: str) -> None:
        self._records_behind.pop(container_id, None)
        self.disk.forget(container_id)
        await self.engine.remove(container_id)

    async def ensure_network(self) -> list[str]:
        """The containers' network, and whether kernels go without one (IPC: see ipc.py)."""
        warnings = await self.engine.ensure_network()
        engine = self.engine
        self.ipc_folders = None
        if engine.network_egress or not engine.ipc_dir:
            return warnings
        base = os.path.join(engine.ipc_dir, engine.gateway_id)
        why = "the engine is not on this machine" if not engine.is_local else IpcFolders.usable(base)
        if why:
            warnings.append(f"kernels talk TCP on the internal network, not IPC without one: {why}")
        else:
            self.ipc_folders = IpcFolders(base)
        return warnings

    async def list_ours(self) -> list[Owned]:
        return [Owned(str(c.id), dict(c.labels or {})) for c in await self.engine.list_ours()]

    async def nodes(self) -> list[Node]:
        return [Node(socket.gethostname(), host_memory(), float(os.cpu_count() or 1))]

    def node_of(self, container_id: str) -> str:
        return socket.gethostname()

    async def labelled_images(self, label: str) -> list[tuple[list[str], dict[str, str], str]]:
        return await self.engine.labelled_images(label)

    async def start_again(self, container_id: str) -> None:
        """Start a container that ended (a kernel restarted after its container died). The
        engine starts it with the limits it has on record: one written into the cgroup alone
        (update_limits) is on its record first."""
        behind = self._records_behind.pop(container_id, None)
        if behind is not None:
            task, body = behind
            if not task.done() or task.cancelled() or task.exception() is not None:
                task.cancel()
                await self._post_update(container_id, body)
        await self.engine.api("start", container_id)

    async def signal(self, container_id: str, signum: int) -> None:
        """Send `signum` to the container's main process; one that is not running already is what
        the caller wanted (stopped), so that is no error."""
        try:
            await self.engine.api("kill", container_id, signal=int(signum))
        except EngineError as e:
            if e.status_code not in (404, 409) and "is not running" not in e.message:
                raise

    def create_kwargs(self, spec: ContainerSpec) -> dict[str, Any]:
        """Docker's create arguments: limits, no privileges, no capabilities, the isolated network."""
        engine = self.engine
        rootfs, writable = engine.rootfs(spec.working_dir, spec.run_dir)
        mounts = writable + [docker.types.Mount(target=m.target, source=m.source, type="bind", read_only=m.read_only)
                             for m in spec.mounts]
        network = spec.network or engine.network
        host_config = engine.client.api.create_host_config(
            mem_limit=spec.memory_bytes or None, memswap_limit=spec.memory_bytes or None,
            nano_cpus=max(int(spec.cpus * 1e9), 10**7),  # never 0: Docker reads 0 as unlimited
            pids_limit=spec.pids, security_opt=["no-new-privileges"], cap_drop=["ALL"], init=spec.init,
            mounts=mounts or None, network_mode=network or None, log_config=engine.log_config(), **rootfs,
            device_requests=[docker.types.DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])] if spec.gpus else None,
        )
        labels = {**engine.our_labels(), LABEL_KIND: spec.kind, **spec.labels}
        # With stdin: open, closed when the one attach that writes it ends (docker-py sets
        # StdinOnce only for a container not created `detach`ed; the engine ignores the rest).
        return {"image": spec.image, "command": spec.command, "environment": spec.env, "labels": labels,
                "user": spec.user, "working_dir": spec.working_dir, "hostname": spec.hostname,
                "detach": not spec.stdin, "stdin_open": bool(spec.stdin), "host_config": host_config}

    async def create(self, spec: ContainerSpec, timeout: float) -> str:
        """Create the container and put its files in; not started. Raises ContainerFailed, or
        EngineUnavailable when the engine cannot be reached."""
        engine = self.engine
        created: str | None = None
        try:
            resp = await asyncio.wait_for(
                engine.run(lambda: engine.client.api.create_container(**self.create_kwargs(spec)),
                           method="create_container"), timeout)
            created = str(resp["Id"])
            for directory, tar in spec.tars().items():
                await engine.api("put_archive", created, directory, tar)
            return created
        except BaseException as e:
            if created is not None:
                await self.discard(created)
            raise self.failure(e, spec.image) from e

    async def start(self, container_id: str, timeout: float, image: str = "", stdin: bytes = b"") -> None:
        """Start a created container; `stdin` (its spec's) is written to it as it starts. Raises
        ContainerFailed."""
        try:
            if stdin:
                await asyncio.wait_for(self.engine.run(lambda: self._start_with_stdin(container_id, stdin),
                                                       method="start"), timeout)
            else:
                await asyncio.wait_for(self.engine.api("start", container_id), timeout)
        except BaseException as e:
            raise self.failure(e, image) from e

    def _start_with_stdin(self, container_id: str, data: bytes) -> None:
        """Attach to the container's stdin, start it, write `data`, end it (SHUT_WR: the engine
        then closes the container's stdin, StdinOnce) and close. The engine's own close of the
        attach is not waited for: about one start in 30 it never came (measured: 1 of 30 waited
        out 8 s) while the data had gone through; the reader (kge-nanny) waits for its EOF."""
        api = self.engine.client.api
        attached = api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
        try:
            api.start(container_id)
            sock = getattr(attached, "_sock", attached)  # docker-py hands a SocketIO over the raw socket
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # a close alone sends no EOF (docker-py keeps the socket)
        finally:
            attached.close()

    # ---- specialising a running container (a pooled kernel handed out) ---------------------
    async def update_limits(self, container_id: str, *, memory_bytes: int, cpus: float, pids: int) -> None:
        """Set a running container's memory (and swap: none beyond it), CPU and process limits, as
        create_kwargs sets them for a new one: straight into its cgroup where this gateway can
        (cgroups.py; the engine's record follows in the background), else by the engine."""
        body = {"Memory": memory_bytes, "MemorySwap": memory_bytes, "NanoCpus": max(int(cpus * 1e9), 10**7),
                "PidsLimit": pids}
        try:
            info = await self.engine.api("inspect_container", container_id)
        except EngineError as e:
            raise ContainerFailed(f"limits could not be applied: {e.message}", detail=e.message) from e
        pid, full_id = first_process(info, container_id)
        loop = asyncio.get_running_loop()
        try:
            written = pid > 0 and await loop.run_in_executor(None, lambda: write_limits(
                pid, full_id, memory_bytes=memory_bytes, nano_cpus=int(body["NanoCpus"]), pids=pids))
        except LimitRefused as e:
            raise ContainerFailed(f"limits could not be applied: {e}", detail=str(e)) from e
        if written:
            task = self._behind.spawn(self._post_update(container_id, body, quiet_if_gone=True, after=RECORD_DELAY))
            self._records_behind[container_id] = (task, body)
            task.add_done_callback(lambda t: self._records_behind.pop(container_id, None)
                                   if not t.cancelled() and t.exception() is None else None)
        else:
            await self._post_update(container_id, body)

    async def _post_update(self, container_id: str, body: dict[str, Any], quiet_if_gone: bool = False,
                           after: float = 0.0) -> None:
        """The engine's update call (`after` s from now). docker-py's update_container knows no
        NanoCpus or PidsLimit, so this posts it itself."""
        if after:
            await asyncio.sleep(after)
        api = self.engine.client.api
        try:
            await self.engine.run(lambda: api._result(api._post_json(
                api._url("/containers/{0}/update", container_id), data=body), True), method="update_container")
        except ContainerMissing:
            if not quiet_if_gone:  # a kernel deleted right after its hand-out: nothing to update
                raise ContainerFailed("limits could not be applied: the container is gone") from None
        except EngineError as e:
            raise ContainerFailed(f"limits could not be applied: {e.message}", detail=e.message) from e

    def can_attach_mounts(self) -> str:
        return mounter_supported()

    async def attach_mounts(self, container_id: str, mounts: list[BindMount]) -> None:
        """Bind host folders into a running container, as `create` would have mounted them."""
        if not mounts:
            return
        info = await self.engine.api("inspect_container", container_id)
        pid, _ = first_process(info, container_id)
        if not pid:
            raise ContainerFailed("folders could not be mounted: the container is not running")
        await MountHelper.instance().attach(pid, mounts)

    async def prepare_attach(self) -> None:
        if mounter_supported() == "":
            await MountHelper.instance().start()

    async def address(self, container_id: str, required: bool = True) -> str:
        """The container's address on its network; a container that already ended has none (an
        error when `required`, '' otherwise: a job may finish before it is asked)."""
        try:
            info = await self.engine.api("inspect_container", container_id)
        except EngineError as e:
            raise self.failure(e, "") from e
        ip = address_of(info)
        if not ip and required:
            state = info.get("State", {})
            raise ContainerFailed(f"container has no network address (state {state.get('Status')}, "
                                  f"exit {state.get('ExitCode')})")
        return ip

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """The container's State (Running, ExitCode, OOMKilled, …); None once it is gone.
        Raises EngineUnavailable when the engine cannot say."""
        try:
            info = await self.engine.api("inspect_container", container_id)
        except ContainerMissing:
            return None
        except EngineError as e:
            raise EngineUnavailable(f"the engine could not inspect a container: {e.message}") from e
        return dict(info.get("State") or {})

    async def discard(self, container_id: str) -> None:
        """Remove a container that failed to launch; a failure here must not hide the first."""
        self._records_behind.pop(container_id, None)
        self.engine.unsubscribe(container_id)
        try:
            await asyncio.shield(self.engine.remove(container_id))
        except Exception:  # noqa: BLE001
            pass

    @staticmethod
    def failure(e: BaseException, image: str) -> BaseException:
        """The one translation of what a launch raised."""
        if isinstance(e, ImageMissing):
            return ContainerFailed(f"image {image!r} not found: build it with `kernel-gateway-ext build-images`",
                                   detail=e.message)
        if isinstance(e, EngineError):
            return ContainerFailed(f"container could not start: {e.message}", detail=e.message)
        if isinstance(e, asyncio.TimeoutError):
            return ContainerFailed("container start timed out", detail="timed out")
        return e  # EngineUnavailable (503) and the rest pass as they are

    async def open_tty(self, container_id: str, argv: list[str], *, user: str, workdir: str,
                       env: dict[str, str]) -> Tty:
        created = await self.engine.api("exec_create", container_id, argv, stdin=True, tty=True, user=user,
                                        workdir=workdir, environment=env)
        holder = await self.engine.api("exec_start", created["Id"], tty=True, socket=True)
        return Tty(self.engine, created["Id"], holder)

    async def run_detached(self, container_id: str, argv: list[str], user: str) -> None:
        """Run a short command in the container and wait for it (its output is not kept)."""
        created = await self.engine.api("exec_create", container_id, argv, user=user)
        await self.engine.api("exec_start", created["Id"])

    async def put_tree(self, container_id: str, directory: str, files: list[tuple[str, bytes]], uid: int,
                       gid: int) -> None:
        """Write files (relative paths, already checked) under `directory`, owned by uid:gid, with
        the folders they need."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            dirs: set[str] = set()
            for rel, body in files:
                parts = rel.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i])
                    if d not in dirs:
                        dirs.add(d)
                        ti = tarfile.TarInfo(d)
                        ti.type, ti.mode, ti.uid, ti.gid = tarfile.DIRTYPE, 0o755, uid, gid
                        tar.addfile(ti)
                ti = tarfile.TarInfo(rel)
                ti.size, ti.mode, ti.mtime, ti.uid, ti.gid = len(body), 0o644, int(time.time()), uid, gid
                tar.addfile(ti, io.BytesIO(body))
        await self.engine.api("put_archive", container_id, directory, buf.getvalue())

    async def exec_capture(self, container_id: str, argv: list[str], *, user: str, workdir: str,
                           env: dict[str, str], max_output: int) -> tuple[int, bytes, bytes, int]:
        """Run a command to its end: (exit code, stdout, stderr, bytes dropped). At most `max_output`
        bytes are kept; the rest is read and counted, so the command never blocks on a full pipe.
        It runs in the engine's pool for long calls (as long as the command)."""
        engine = self.engine
        created = await engine.api("exec_create", container_id, argv, user=user, workdir=workdir, environment=env)

        def read() -> tuple[bytes, bytes, int]:
            kept = {0: bytearray(), 1: bytearray()}
            dropped = 0
            for chunk in engine.client.api.exec_start(created["Id"], stream=True, demux=True):
                for which, data in enumerate(chunk):
                    if not data:
                        continue
                    room = max(0, max_output - len(kept[0]) - len(kept[1]))
                    kept[which] += data[:room]
                    dropped += max(0, len(data) - room)
            return bytes(kept[0]), bytes(kept[1]), dropped

        out, err, dropped = await engine.run_long(read)
        code = int((await engine.api("exec_inspect", created["Id"])).get("ExitCode") or 0)
        return code, out, err, dropped

    async def totals(self, container_id: str) -> Usage:
        """Memory in use (page cache excluded), its peak and CPU time so far (no rate): from the
        container's cgroup where this gateway can read it (cgroups.py), else from the engine."""
        try:
            info = await self.engine.api("inspect_container", container_id)
        except (EngineError, EngineUnavailable):
            return Usage()
        pid, full_id = first_process(info, container_id)
        read = await asyncio.get_running_loop().run_in_executor(None, read_usage, pid, full_id) if pid > 0 else None
        if read is None:
            return await self.usage(container_id)
        memory, memory_max, cpu_ns = read
        return Usage(memory=memory, memory_max=memory_max, cpu_ns=cpu_ns)

    async def usage(self, container_id: str, host_cores: int = 1) -> Usage:
        """Live figures; zeros for a container exiting right now (the engine answers an empty body)."""
        try:
            raw = await self.engine.api("stats", container_id, stream=False, one_shot=True)
        except (EngineError, EngineUnavailable):
            return Usage()
        mem = raw.get("memory_stats") or {}
        cache = int((mem.get("stats") or {}).get("cache", 0))
        cpu = raw.get("cpu_stats") or {}
        pre = raw.get("precpu_stats") or {}
        total = int((cpu.get("cpu_usage") or {}).get("total_usage", 0))
        delta = total - int((pre.get("cpu_usage") or {}).get("total_usage", 0))
        sys_delta = int(cpu.get("system_cpu_usage", 0)) - int(pre.get("system_cpu_usage", 0))
        cores = (delta / sys_delta) * (cpu.get("online_cpus") or host_cores) if sys_delta > 0 else 0.0
        return Usage(memory=max(0, int(mem.get("usage", 0)) - cache), memory_max=int(mem.get("max_usage", 0)),
                     cpu_ns=total, cores=cores)

    async def disk_unmeasured(self) -> str:
        return await self.disk.why_not()

    async def disk_use(self, container_id: str, stop_bytes: int, stop_files: int) -> tuple[int, int]:
        """(bytes, entries) its own files hold on this host's disk (diskuse.py), counted up to the
        bounds only. Raises ContainerMissing."""
        return await self.disk.measure(container_id, stop_bytes, stop_files)

    async def follow_logs(self, container_id: str, tail: int) -> LogStream:
        """Its output from the last `tail` lines on, as it comes (`docker logs --follow`)."""
        raw = await self.engine.api("logs", container_id, stdout=True, stderr=True, tail=tail, stream=True, follow=True)
        return LogStream(self.engine, raw)

    async def logs(self, container_id: str, tail: int) -> str:
        """The container's last `tail` lines of output ('' once it is gone)."""
        try:
            raw = await self.engine.api("logs", container_id, stdout=True, stderr=True, tail=tail)
        except ContainerMissing:
            return ""
        return bytes(raw).decode(errors="replace")
