"""The Docker Swarm cluster backend: each kernel or Skaha job container is a Swarm service.

Why a service per container: Swarm's scheduler places it (reservations, limits, constraints,
generic resources such as GPUs), its manager keeps the record when the gateway dies, and a forced
update places a dead one again, on a live node, under the same service id: the id our provisioner
and job records keep. One task, never restarted by Swarm (restart policy "none"): the gateway
decides what a death means, as on one engine.

The manager places; what happens inside a placed container (its address, signals, exec,
terminals, stats, logs, events) goes to the engine of the node it runs on, through the same
`ContainerRuntime` the single-engine backend uses: one code path for the container itself. The
gateway therefore reaches each node's engine (`node_engines`) and each node's kernel subnet (a
route): see the README's "Running on a cluster".

Files put into a container before it starts (the kernel's connection file with its key) become
Swarm secrets mounted at their paths with their owner and mode: encrypted in the manager's store,
a tmpfs on the node, removed with the service.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import docker.types

from ..errors import ContainerFailed, ContainerMissing, EngineError, EngineUnavailable
from .backend import EventCallback, Node, Owned, Terminal, Usage
from .engine import DockerEngine
from .runtime import ContainerRuntime
from .streams import LogStream
from .spec import LABEL_GATEWAY, LABEL_MANAGED, BindMount, ContainerSpec
from .swarm_events import NodeWatch, reachable
from .swarm_spec import SwarmSettings, service_spec
from .swarm_tasks import LABEL_LIMITS, MAX_REPLACEMENTS, Misplaced, Placements, update_service


class SwarmBackend:
    """A ContainerBackend on a Swarm cluster (see the module's docstring)."""

    def __init__(self, manager: DockerEngine) -> None:
        self.manager = manager
        self.settings = SwarmSettings(parent=manager.parent)
        self.nodes_by_name: dict[str, ContainerRuntime] = {}
        for name, url in self.settings.engines().items():
            engine = DockerEngine(parent=manager.parent, docker_url=url, gateway_id=manager.gateway_id,
                                  network=manager.network, read_only_rootfs=manager.read_only_rootfs,
                                  log_max_size=manager.log_max_size)
            engine.call_observer = manager.call_observer
            self.nodes_by_name[name] = ContainerRuntime(engine)
        self.places = Placements(manager, self.nodes_by_name, self.settings)
        for name, runtime in self.nodes_by_name.items():
            runtime.engine.event_listeners.append(self.places.node_event(name))
            # A node engine's stream broke: ask the manager now (it says down once heartbeats stop).
            runtime.engine.lost_listeners.append(lambda: self.node_watch.check_soon())
        self.node_watch = NodeWatch(manager, self.places.node_state, self._node_lost)

    @property
    def gateway_id(self) -> str:
        return str(self.manager.gateway_id)

    @property
    def call_timeout(self) -> float:
        return float(self.manager.call_timeout)

    files_read_only = True  # secrets: a read-only tmpfs file each
    takes_stdin = False  # a service's container has no stdin to attach to
    ipc_folders = None  # kernels on other nodes: TCP always

    def node_of(self, container_id: str) -> str:
        return self.places.node_of(container_id)

    def _node_lost(self, node: str, address: str | None) -> bool:
        """In the node watch's thread: is `node` (which the manager says is down) really lost?
        Yes if it is unknown, its engine does not answer, or its address on the cluster's network
        (the way to its kernels) does not: a node engine reached another way (a local socket, as
        in scripts/swarm-cluster) can answer while the node's network is cut."""
        runtime = self.nodes_by_name.get(node)
        if runtime is None or not runtime.engine.ping_sync():
            return True
        return address is None or not reachable(address)

    async def locate(self, service_id: str) -> tuple[ContainerRuntime, str]:
        return await self.places.locate(service_id)

    def subscribe(self, container_id: str, callback: EventCallback) -> None:
        self.places.subscribers.add(container_id, callback)
        for runtime in self.nodes_by_name.values():
            runtime.engine._ensure_events_thread()
        self.node_watch.ensure()

    def unsubscribe(self, container_id: str, callback: EventCallback | None = None) -> None:
        self.places.subscribers.remove(container_id, callback)

    def on_reconnect(self, callback: Callable[[], object], container_id: str | None = None) -> None:
        for runtime in self.nodes_by_name.values():
            runtime.engine.on_reconnect(callback, container_id)

    # ---- lifecycle ----------------------------------------------------------------------------
    async def create(self, spec: ContainerSpec, timeout: float) -> str:
        """Create the service (Swarm places and starts it at once; `start` waits for that)."""
        name = f"kge-{spec.kind}-{uuid.uuid4().hex[:16]}"
        api = self.manager.client.api
        labels = {**self.manager.our_labels(), "org.kge.service": name}
        secrets: list[docker.types.SecretReference] = []
        uid, gid = spec.uid_gid
        try:
            for i, f in enumerate(spec.files):
                secret = f"{name}-{i}"
                made = await self.manager.run(lambda s=secret, d=f.data: api.create_secret(s, d, labels=labels),
                                              method="create_secret")
                secrets.append(docker.types.SecretReference(
                    made["ID"], secret, filename=f"{f.directory.rstrip('/')}/{f.name}", uid=str(uid), gid=str(gid),
                    mode=f.mode))
            kwargs = service_spec(self.settings, self.manager, spec, name, secrets)
            made = await asyncio.wait_for(self.manager.run(lambda: api.create_service(**kwargs),
                                                           method="create_service"), timeout)
            sid = str(made["ID"])
            self.places.expect_start(sid)
            return sid
        except BaseException as e:
            await self._remove_secrets(name)
            raise ContainerRuntime.failure(e, spec.image) from e

    async def start(self, container_id: str, timeout: float, image: str = "", stdin: bytes = b"") -> None:
        """Wait until the service's container runs. A task placed on a node that cannot run it
        (its engine gone while the manager still counts it ready) is placed again elsewhere, up
        to twice; one Swarm cannot place answers 429 with the scheduler's reason, at once."""
        deadline = asyncio.get_running_loop().time() + min(timeout, self.settings.start_timeout)
        avoid: set[str] = set()
        while True:
            try:
                await self.places.started(container_id, deadline)
                return
            except Misplaced as e:
                avoid.add(e.node)
                if len(avoid) > MAX_REPLACEMENTS:
                    raise ContainerFailed(f"container could not start: {e.reason}", detail=e.reason) from None
                self.manager.log.warning("Service %s: %s; placing it again", container_id[:12], e.reason)
                await self.places.place_again(container_id, avoid)

    async def start_again(self, container_id: str) -> None:
        """Place the service's container again (forced update: a new task), with the limits it
        had been given since it was made, on a node whose engine answers: the manager still
        counts a node whose engine just stopped as ready for a few heartbeats."""
        await self.places.place_again(container_id, await self.places.unreachable_nodes())
        await self.start(container_id, self.settings.start_timeout)

    async def signal(self, container_id: str, signum: int) -> None:
        try:
            runtime, cid = await self.locate(container_id)
        except (ContainerMissing, EngineUnavailable):
            return  # no container runs: it is as stopped as a signal could make it
        try:
            await runtime.signal(cid, signum)
        except EngineUnavailable:
            return  # its node is gone, and the container with it

    async def discard(self, container_id: str) -> None:
        try:
            await asyncio.shield(self.remove(container_id))
        except Exception:  # noqa: BLE001 - a failed launch's first error is the one to report
            pass

    async def remove(self, container_id: str) -> None:
        """Remove the service, its secrets and its container (at once, not when Swarm gets to it)."""
        try:
            info = await self.manager.api("inspect_service", container_id)
        except ContainerMissing:
            info = None
        if info is not None:
            try:
                await self.manager.api("remove_service", container_id)
            except ContainerMissing:
                pass
            await self._remove_secrets(str(info["Spec"]["Name"]))
        # Swarm removes its containers (this task's, and earlier tasks' on nodes that came back)
        # when it gets to it; doing it now leaves nothing behind at once.
        for node, cid in self.places.forget(container_id):
            if node in self.nodes_by_name:
                try:
                    await self.nodes_by_name[node].remove(cid)
                except (EngineError, EngineUnavailable):
                    pass

    async def _remove_secrets(self, name: str) -> None:
        api = self.manager.client.api
        try:
            found = await self.manager.run(lambda: api.secrets(filters={"label": f"org.kge.service={name}"}),
                                           method="secrets")
            for s in found:
                try:
                    await self.manager.api("remove_secret", s["ID"])
                except ContainerMissing:
                    pass
        except (EngineError, EngineUnavailable):
            pass

    # ---- specialising a running container -----------------------------------------------------
    def can_attach_mounts(self) -> str:
        return "folders cannot be bound into a running container on another node"

    async def update_limits(self, container_id: str, *, memory_bytes: int, cpus: float, pids: int) -> None:
        """On the running container now (its node's engine), and in the service's labels so that
        placing it again (start_again) gives it the same."""
        runtime, cid = await self.locate(container_id)
        await runtime.update_limits(cid, memory_bytes=memory_bytes, cpus=cpus, pids=pids)
        info = await self.manager.api("inspect_service", container_id)
        spec = dict(info["Spec"])
        given = {"memory": memory_bytes, "nano_cpus": max(int(cpus * 1e9), 10**7), "pids": pids}
        spec["Labels"] = {**(spec.get("Labels") or {}), LABEL_LIMITS: json.dumps(given)}
        # Only the service's labels change: Swarm does not replace the task for that.
        await update_service(self.manager, container_id, info, spec)

    async def attach_mounts(self, container_id: str, mounts: list[BindMount]) -> None:
        if mounts:
            raise ContainerFailed(self.can_attach_mounts())

    async def prepare_attach(self) -> None:
        return None

    # ---- the engine itself ----------------------------------------------------------------------
    async def ensure_network(self) -> list[str]:
        name = self.manager.network
        try:
            net = await self.manager.api("inspect_network", name)
        except ContainerMissing:
            raise EngineUnavailable(f"the cluster has no network {name!r}: make it as the README's "
                                    "'Running on a cluster' says (scripts/swarm-cluster does)") from None
        if net.get("Scope") != "swarm":
            return [f"network {name} is not swarm-scoped: containers on other nodes cannot join it"]
        return []

    async def list_ours(self) -> list[Owned]:
        services = await self.manager.api("services", filters={"label": [f"{LABEL_MANAGED}=true",
                                                                         f"{LABEL_GATEWAY}={self.gateway_id}"]})
        return [Owned(str(s["ID"]), dict((s.get("Spec") or {}).get("Labels") or {})) for s in services]

    async def nodes(self) -> list[Node]:
        out = []
        for n in await self.manager.api("nodes"):
            spec, desc = n.get("Spec") or {}, n.get("Description") or {}
            if spec.get("Availability") != "active":
                continue  # drained (a manager only) or paused: nothing new is placed there
            res = desc.get("Resources") or {}
            out.append(Node(str(desc.get("Hostname") or n.get("ID")), int(res.get("MemoryBytes") or 0),
                            int(res.get("NanoCPUs") or 0) / 1e9, (n.get("Status") or {}).get("State") == "ready"))
        return out

    async def labelled_images(self, label: str) -> list[tuple[list[str], dict[str, str], str]]:
        return await self.manager.labelled_images(label)

    # ---- on the container, through its node ----------------------------------------------------
    async def address(self, container_id: str, required: bool = True) -> str:
        try:
            runtime, cid = await self.locate(container_id)
        except ContainerMissing:
            if required:
                raise ContainerFailed("container has no network address (it is not running)") from None
            return ""
        return await runtime.address(cid, required)

    async def state(self, container_id: str) -> dict[str, Any] | None:
        try:
            await self.manager.api("inspect_service", container_id)
        except ContainerMissing:
            return None
        try:
            runtime, cid = await self.locate(container_id)
            found = await runtime.state(cid)
        except (ContainerMissing, EngineUnavailable) as e:
            return {"Running": False, "ExitCode": -1, "Error": getattr(e, "message", str(e))}
        return found if found is not None else {"Running": False, "ExitCode": -1}

    async def usage(self, container_id: str, host_cores: int = 1) -> Usage:
        try:
            runtime, cid = await self.locate(container_id)
        except (ContainerMissing, EngineUnavailable):
            return Usage()
        return await runtime.usage(cid, host_cores)

    async def totals(self, container_id: str) -> Usage:
        try:
            runtime, cid = await self.locate(container_id)
        except (ContainerMissing, EngineUnavailable):
            return Usage()
        return await runtime.totals(cid)

    async def disk_unmeasured(self) -> str:
        return "containers run on the cluster's nodes (bound their disk there: Docker's storage-opt size on xfs)"

    async def disk_use(self, container_id: str, stop_bytes: int, stop_files: int) -> tuple[int, int]:
        raise EngineError("a cluster's containers are not measured here")

    async def follow_logs(self, container_id: str, tail: int) -> LogStream:
        runtime, cid = await self.locate(container_id)
        return await runtime.follow_logs(cid, tail)

    async def logs(self, container_id: str, tail: int) -> str:
        try:
            runtime, cid = await self.locate(container_id)
            return await runtime.logs(cid, tail)
        except (ContainerMissing, EngineUnavailable):
            return ""

    async def open_tty(self, container_id: str, argv: list[str], *, user: str, workdir: str,
                       env: dict[str, str]) -> Terminal:
        runtime, cid = await self.locate(container_id)
        return await runtime.open_tty(cid, argv, user=user, workdir=workdir, env=env)

    async def run_detached(self, container_id: str, argv: list[str], user: str) -> None:
        runtime, cid = await self.locate(container_id)
        await runtime.run_detached(cid, argv, user)

    async def put_tree(self, container_id: str, directory: str, files: list[tuple[str, bytes]], uid: int,
                       gid: int) -> None:
        runtime, cid = await self.locate(container_id)
        await runtime.put_tree(cid, directory, files, uid, gid)

    async def exec_capture(self, container_id: str, argv: list[str], *, user: str, workdir: str,
                           env: dict[str, str], max_output: int) -> tuple[int, bytes, bytes, int]:
        runtime, cid = await self.locate(container_id)
        return await runtime.exec_capture(cid, argv, user=user, workdir=workdir, env=env, max_output=max_output)

    def close(self) -> None:
        self.node_watch.close()
        for runtime in self.nodes_by_name.values():
            runtime.engine.close()
