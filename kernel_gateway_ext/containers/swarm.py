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
import threading
import uuid
from collections.abc import Callable
from typing import Any

import docker.types
from ..errors import ContainerFailed, ContainerMissing, EngineError, EngineUnavailable, OverCapacity
from .backend import EventCallback, Node, Owned, Terminal, Usage
from .engine import DockerEngine
from .runtime import ContainerRuntime
from .spec import LABEL_GATEWAY, LABEL_MANAGED, BindMount, ContainerSpec
from .subscribers import Subscribers
from .swarm_spec import SwarmSettings, resources, service_spec
from .swarm_events import NodeWatch, translate_lost

LABEL_LIMITS = "org.kge.limits"  # limits applied since creation (a pooled kernel handed out)
LABEL_EXCLUDED = "org.kge.excluded-nodes"  # placement exclusions start_again added (unreachable engines)
LABEL_SERVICE_ID = "com.docker.swarm.service.id"
NO_ROOM = "no suitable node"  # the scheduler's words for a task it cannot place
FAILED_TASK_STATES = {"failed", "rejected", "orphaned", "shutdown", "complete"}


def _resolve(fut: "asyncio.Future[tuple[str, str]]", value: tuple[str, str]) -> None:
    if not fut.done():
        fut.set_result(value)


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
            engine.event_listeners.append(self._node_event(name))
            engine.lost_listeners.append(self._node_stream_lost)
            self.nodes_by_name[name] = ContainerRuntime(engine)
        self._lock = threading.Lock()
        self._where: dict[str, tuple[str, str]] = {}  # service id → (node name, container id)
        self._subscribers = Subscribers()
        self._starting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[tuple[str, str]]]] = {}
        self._node_names: dict[str, str] = {}  # node id → hostname
        self.node_watch = NodeWatch(manager, self._node_state)

    @property
    def gateway_id(self) -> str:
        return str(self.manager.gateway_id)

    @property
    def call_timeout(self) -> float:
        return float(self.manager.call_timeout)

    files_read_only = True  # secrets: a read-only tmpfs file each

    # ---- where a service's container is ---------------------------------------------------------
    async def _node_name(self, node_id: str) -> str:
        if node_id not in self._node_names:
            info = await self.manager.api("inspect_node", node_id)
            self._node_names[node_id] = str((info.get("Description") or {}).get("Hostname") or node_id)
        return self._node_names[node_id]

    async def _task(self, service_id: str) -> dict[str, Any] | None:
        """The service's newest task (its one container, or the one a forced update placed last)."""
        tasks = await self.manager.api("tasks", filters={"service": service_id})
        tasks.sort(key=lambda t: (int((t.get("Version") or {}).get("Index") or 0)))
        return tasks[-1] if tasks else None

    async def locate(self, service_id: str) -> tuple[ContainerRuntime, str]:
        """The runtime of the node running the service's container, and the container's id.
        Raises ContainerMissing (no such service, or no container yet) or EngineUnavailable."""
        where = self._where.get(service_id)
        if where is None:
            try:
                task = await self._task(service_id)
            except ContainerMissing:
                raise
            cid = str(((task or {}).get("Status") or {}).get("ContainerStatus", {}).get("ContainerID") or "")
            if not task or not cid:
                raise ContainerMissing(f"service {service_id[:12]} has no container", 404)
            where = (await self._node_name(str(task.get("NodeID") or "")), cid)
            self._where[service_id] = where
        node, cid = where
        runtime = self.nodes_by_name.get(node)
        if runtime is None:
            raise EngineUnavailable(f"node {node} has no engine in KGE_SWARM_NODE_ENGINES")
        return runtime, cid

    def node_of(self, container_id: str) -> str:
        return self._where.get(container_id, ("", ""))[0]

    # ---- events: node engines' container events, as the service's ---------------------------------
    def _node_event(self, node: str) -> EventCallback:
        def on_event(event: dict[str, Any]) -> None:  # in that node's events thread
            attrs = (event.get("Actor") or {}).get("Attributes") or {}
            sid, cid = attrs.get(LABEL_SERVICE_ID), (event.get("Actor") or {}).get("ID") or ""
            if not sid:
                return
            action = event.get("Action") or event.get("status") or ""
            with self._lock:
                if action == "start":
                    self._where[sid] = (node, cid)
                    waiting = self._starting.pop(sid, None)
                    if waiting is not None:
                        loop, fut = waiting
                        loop.call_soon_threadsafe(_resolve, fut, (node, cid))
                elif self._where.get(sid, (node, cid))[1] != cid:
                    return  # a container this service no longer runs (an earlier task being removed)
            self._subscribers.deliver(sid, event)
        return on_event

    def _node_stream_lost(self) -> None:
        """A node engine's event stream broke: ask the manager about that node now (it says down
        once its heartbeats stop; the node watch then reports its containers dead)."""
        self.node_watch.check_soon()

    def _node_state(self, node: str, state: str, message: str) -> None:
        """The manager says `node` is `state` (in the node watch's thread): a node that is down
        has lost its containers; each one's subscribers hear it died, with the reason."""
        if state != "down":
            return  # "unknown" right after a manager restarts is not a loss: the node reports in again
        with self._lock:
            lost = [sid for sid, (n, _) in self._where.items() if n == node]
            for sid in lost:
                self._where.pop(sid, None)
        event = translate_lost(node, message)
        for sid in lost:
            self._subscribers.deliver(sid, event)

    def subscribe(self, container_id: str, callback: EventCallback) -> None:
        self._subscribers.add(container_id, callback)
        for runtime in self.nodes_by_name.values():
            runtime.engine._ensure_events_thread()
        self.node_watch.ensure()

    def unsubscribe(self, container_id: str, callback: EventCallback | None = None) -> None:
        self._subscribers.remove(container_id, callback)

    def on_reconnect(self, callback: Callable[[], object], container_id: str | None = None) -> None:
        for runtime in self.nodes_by_name.values():
            runtime.engine.on_reconnect(callback, container_id)

    # ---- lifecycle ----------------------------------------------------------------------------
    async def create(self, spec: ContainerSpec, timeout: float) -> str:
        """Create the service (Swarm places and starts it at once; `start` waits for that)."""
        name = f"kge-{spec.kind}-{uuid.uuid4().hex[:16]}"
        api = self.manager.client.api
        labels = {LABEL_MANAGED: "true", LABEL_GATEWAY: self.manager.gateway_id, "org.kge.service": name}
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
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[tuple[str, str]] = loop.create_future()
            kwargs = service_spec(self.settings, self.manager, spec, name, secrets)
            made = await asyncio.wait_for(self.manager.run(lambda: api.create_service(**kwargs),
                                                           method="create_service"), timeout)
            sid = str(made["ID"])
            with self._lock:
                if sid in self._where:
                    fut.set_result(self._where[sid])
                self._starting[sid] = (loop, fut)
            return sid
        except BaseException as e:
            await self._remove_secrets(name)
            raise ContainerRuntime.failure(e, spec.image) from e

    async def start(self, container_id: str, timeout: float, image: str = "") -> None:
        """Wait until the service's container runs. A task Swarm could not place or start fails
        with the scheduler's reason (no node with room, image missing on the node, …)."""
        with self._lock:
            waiting = self._starting.get(container_id)
            if waiting is None and container_id in self._where:
                return
        if waiting is None:
            raise ContainerFailed("container could not start: nothing is starting it")
        fut = waiting[1]
        deadline = asyncio.get_running_loop().time() + min(timeout, self.settings.start_timeout)
        # The start event ends the wait; a task that cannot start sends none, so its state is read
        # at 1, 2, 4, … s while it waits (only during a launch) to answer its reason.
        pause = 1.0
        try:
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    error = await self._task_error(container_id)
                    raise ContainerFailed("container start timed out" + (f": {error}" if error else ""), detail=error)
                try:
                    await asyncio.wait_for(asyncio.shield(fut), min(pause, left))
                    return
                except asyncio.TimeoutError:
                    pause *= 2
                    error = await self._task_error(container_id, failed_only=True)
                    if NO_ROOM in error:  # every node's reservations are full: a 429, at once
                        raise OverCapacity(f"the cluster has no room for this container ({error})")
                    if error:
                        raise ContainerFailed(f"container could not start: {error}", detail=error)
        finally:
            with self._lock:
                self._starting.pop(container_id, None)

    async def _task_error(self, service_id: str, failed_only: bool = False) -> str:
        try:
            task = await self._task(service_id)
        except (EngineError, EngineUnavailable):
            return ""
        status = (task or {}).get("Status") or {}
        state = str(status.get("State") or "")
        if failed_only and state not in FAILED_TASK_STATES and NO_ROOM not in str(status.get("Err") or ""):
            return ""
        return str(status.get("Err") or status.get("Message") or state)

    async def start_again(self, container_id: str) -> None:
        """Place the service's container again (forced update: a new task), with the limits it
        had been given since it was made, on a node whose engine answers: the manager still
        counts a node whose engine just stopped as ready for a few heartbeats."""
        api = self.manager.client.api
        info, unreachable = await asyncio.gather(self.manager.api("inspect_service", container_id),
                                                 self._unreachable_nodes())
        spec = dict(info["Spec"])
        labels = dict(spec.get("Labels") or {})
        template = dict(spec["TaskTemplate"])
        given = json.loads(labels.get(LABEL_LIMITS) or "{}")
        if given:
            generic = ((template.get("Resources") or {}).get("Reservations") or {}).get("GenericResources")
            template["Resources"] = resources(given["memory"], given["nano_cpus"], given["pids"], 0, self.settings)
            if generic:
                template["Resources"].setdefault("Reservations", {})["GenericResources"] = generic
        # Only the exclusions this backend added last time go; an operator's constraints stay.
        placement = dict(template.get("Placement") or {})
        ours = set(json.loads(labels.get(LABEL_EXCLUDED) or "[]"))
        excluded = [f"node.hostname!={n}" for n in sorted(unreachable)]
        placement["Constraints"] = [c for c in placement.get("Constraints") or [] if c not in ours] + excluded
        template["Placement"] = placement
        labels[LABEL_EXCLUDED] = json.dumps(excluded)
        template["ForceUpdate"] = int(template.get("ForceUpdate") or 0) + 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[str, str]] = loop.create_future()
        with self._lock:
            self._where.pop(container_id, None)
            self._starting[container_id] = (loop, fut)
        version = int(info["Version"]["Index"])
        await self.manager.run(lambda: api._result(api._post_json(
            api._url("/services/{0}/update", container_id), data={**spec, "Labels": labels, "TaskTemplate": template},
            params={"version": version}), True), method="update_service")
        await self.start(container_id, self.settings.start_timeout)

    async def _unreachable_nodes(self, timeout: float = 2.0) -> set[str]:
        async def answers(runtime: ContainerRuntime) -> bool:
            try:
                return await asyncio.wait_for(runtime.engine.ping(), timeout)
            except (asyncio.TimeoutError, EngineUnavailable):
                return False
        names = list(self.nodes_by_name)
        found = await asyncio.gather(*(answers(self.nodes_by_name[n]) for n in names))
        return {n for n, ok in zip(names, found) if not ok}

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
        """Remove the service, its secrets and (waiting a moment for the node) its container."""
        where = self._where.get(container_id)
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
        self._subscribers.remove(container_id)
        with self._lock:
            self._where.pop(container_id, None)
            self._starting.pop(container_id, None)
        if where is not None and where[0] in self.nodes_by_name:
            try:  # Swarm removes the container soon; doing it now leaves nothing behind at once
                await self.nodes_by_name[where[0]].remove(where[1])
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
        api = self.manager.client.api
        # Only the service's labels change: Swarm does not replace the task for that.
        await self.manager.run(lambda: api._result(api._post_json(
            api._url("/services/{0}/update", container_id), data=spec,
            params={"version": int(info["Version"]["Index"])}), True), method="update_service")

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
