"""Where each Swarm service's container is, and waiting for it to be there.

The manager says which node a service's task was given; the node's engine says when its
container starts, dies or goes (one event stream per node, read in a thread, handed to the
subscribers' loops); the manager's node events say when a node is lost. Kept apart from the
backend (swarm.py), which turns the container backend's calls into services and node calls."""
from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from ..errors import ContainerFailed, ContainerMissing, EngineError, EngineUnavailable, OverCapacity
from .backend import EventCallback
from .engine import DockerEngine
from .runtime import ContainerRuntime
from .subscribers import Subscribers
from .swarm_events import translate_lost
from .swarm_spec import SwarmSettings, resources

LABEL_LIMITS = "org.kge.limits"  # limits applied since creation (a pooled kernel handed out)
LABEL_EXCLUDED = "org.kge.excluded-nodes"  # placement exclusions added for unreachable engines
LABEL_SERVICE_ID = "com.docker.swarm.service.id"
PAUSE = 1.0  # seconds between reads of a task that has not started yet (only while a launch waits)
MAX_REPLACEMENTS = 2
NO_ROOM = "no suitable node"  # the scheduler's words for a task it cannot place
FAILED_TASK_STATES = {"failed", "rejected", "orphaned", "shutdown", "complete"}


async def update_service(manager: DockerEngine, service_id: str, info: dict[str, Any], spec: dict[str, Any]) -> None:
    """Post `spec` as the service's new spec, at the version `info` (its inspection) was read at:
    Swarm refuses it if the service changed since. docker-py's update_service cannot post a
    spec as read (its arguments rebuild one), so the engine's update call is posted here."""
    api = manager.client.api
    version = int(info["Version"]["Index"])
    await manager.run(lambda: api._result(api._post_json(
        api._url("/services/{0}/update", service_id), data=spec, params={"version": version}), True),
        method="update_service")


class Misplaced(Exception):
    """A task landed on a node that cannot run it."""

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(reason)
        self.node, self.reason = node, reason


def _resolve(fut: "asyncio.Future[tuple[str, str]]", value: tuple[str, str]) -> None:
    if not fut.done():
        fut.set_result(value)


class Placements:
    def __init__(self, manager: DockerEngine, nodes: dict[str, ContainerRuntime], settings: SwarmSettings) -> None:
        self.manager, self.nodes, self.settings = manager, nodes, settings
        self.subscribers = Subscribers()
        self._lock = threading.Lock()
        self._where: dict[str, tuple[str, str]] = {}  # service id → (node name, container id)
        self._starting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[tuple[str, str]]]] = {}
        self._node_names: dict[str, str] = {}  # node id → hostname
        self._earlier: dict[str, set[tuple[str, str]]] = {}  # service id → containers of its earlier tasks

    def expect_start(self, service_id: str) -> None:
        """A service was just made: its container's start event is awaited by `started`."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[str, str]] = loop.create_future()
        with self._lock:
            if service_id in self._where:
                fut.set_result(self._where[service_id])
            self._starting[service_id] = (loop, fut)

    def forget(self, service_id: str) -> list[tuple[str, str]]:
        """Drop the service; the (node, container) pairs it ran, the current one last."""
        self.subscribers.remove(service_id)
        with self._lock:
            where = self._where.pop(service_id, None)
            self._starting.pop(service_id, None)
            ran = sorted(self._earlier.pop(service_id, set()))
        return ran + ([where] if where else [])

    # ---- where a service's container is ---------------------------------------------------------
    async def node_name(self, node_id: str) -> str:
        if node_id not in self._node_names:
            info = await self.manager.api("inspect_node", node_id)
            self._node_names[node_id] = str((info.get("Description") or {}).get("Hostname") or node_id)
        return self._node_names[node_id]

    async def task(self, service_id: str) -> dict[str, Any] | None:
        """The service's newest task (its one container, or the one a forced update placed last)."""
        tasks = await self.manager.api("tasks", filters={"service": service_id})
        tasks.sort(key=lambda t: (int((t.get("Version") or {}).get("Index") or 0)))
        return tasks[-1] if tasks else None

    async def locate(self, service_id: str) -> tuple[ContainerRuntime, str]:
        """The runtime of the node running the service's container, and the container's id.
        Raises ContainerMissing (no such service, or no container yet) or EngineUnavailable."""
        where = self._where.get(service_id)
        if where is None:
            task = await self.task(service_id)
            cid = str(((task or {}).get("Status") or {}).get("ContainerStatus", {}).get("ContainerID") or "")
            if not task or not cid:
                raise ContainerMissing(f"service {service_id[:12]} has no container", 404)
            where = (await self.node_name(str(task.get("NodeID") or "")), cid)
            self._where[service_id] = where
        node, cid = where
        runtime = self.nodes.get(node)
        if runtime is None:
            raise EngineUnavailable(f"node {node} has no engine in KGE_SWARM_NODE_ENGINES")
        return runtime, cid

    def node_of(self, container_id: str) -> str:
        return self._where.get(container_id, ("", ""))[0]

    # ---- events: node engines' container events, as the service's ---------------------------------
    def node_event(self, node: str) -> EventCallback:
        def on_event(event: dict[str, Any]) -> None:  # in that node's events thread
            attrs = (event.get("Actor") or {}).get("Attributes") or {}
            sid, cid = attrs.get(LABEL_SERVICE_ID), (event.get("Actor") or {}).get("ID") or ""
            if not sid:
                return
            action = event.get("Action") or event.get("status") or ""
            with self._lock:
                if action == "start":
                    before = self._where.get(sid)
                    if before is not None and before != (node, cid):
                        self._earlier.setdefault(sid, set()).add(before)
                    self._where[sid] = (node, cid)
                    waiting = self._starting.pop(sid, None)
                    if waiting is not None:
                        loop, fut = waiting
                        loop.call_soon_threadsafe(_resolve, fut, (node, cid))
                elif self._where.get(sid, (node, cid))[1] != cid:
                    return  # a container this service no longer runs (an earlier task being removed)
            self.subscribers.deliver(sid, event)
        return on_event

    def node_state(self, node: str, state: str, message: str) -> None:
        """The manager says `node` is `state` (in the node watch's thread): a node that is down
        has lost its containers; each one's subscribers hear it died, with the reason."""
        if state != "down":
            return  # "unknown" right after a manager restarts is not a loss: the node reports in again
        with self._lock:
            lost = [sid for sid, (n, _) in self._where.items() if n == node]
            for sid in lost:
                self._earlier.setdefault(sid, set()).add(self._where.pop(sid))
        event = translate_lost(node, message)
        for sid in lost:
            self.subscribers.deliver(sid, event)

    async def started(self, service_id: str, deadline: float) -> None:
        with self._lock:
            waiting = self._starting.get(service_id)
            if waiting is None and service_id in self._where:
                return
        if waiting is None:
            raise ContainerFailed("container could not start: nothing is starting it")
        fut = waiting[1]
        # The start event ends the wait. A task that cannot start sends none, so while a launch
        # waits (only then) its task is read every PAUSE s: failed, unplaceable, or on a node whose
        # engine does not answer.
        loop = asyncio.get_running_loop()
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    error = await self.task_error(service_id)
                    raise ContainerFailed("container start timed out" + (f": {error}" if error else ""), detail=error)
                try:
                    await asyncio.wait_for(asyncio.shield(fut), min(PAUSE, left))
                    return
                except asyncio.TimeoutError:
                    await self.check_task(service_id)
        finally:
            with self._lock:
                self._starting.pop(service_id, None)

    async def check_task(self, service_id: str) -> None:
        try:
            task = await self.task(service_id) or {}
        except (EngineError, EngineUnavailable):
            return  # the manager is away: the deadline decides
        status = task.get("Status") or {}
        state, error = str(status.get("State") or ""), str(status.get("Err") or status.get("Message") or "")
        if NO_ROOM in error:  # every node's reservations are full
            raise OverCapacity(f"the cluster has no room for this container ({error})")
        node = await self.node_name(str(task["NodeID"])) if task.get("NodeID") else ""
        cid = str((status.get("ContainerStatus") or {}).get("ContainerID") or "")
        if state == "running" and node and cid:
            # It runs, and its start event was missed (the node's stream was reconnecting).
            with self._lock:
                self._where[service_id] = (node, cid)
                waiting = self._starting.get(service_id)
            if waiting is not None:
                _resolve(waiting[1], (node, cid))
            return
        if state in FAILED_TASK_STATES:
            if node:
                raise Misplaced(node, f"its task ended on {node} ({error or state})")
            raise ContainerFailed(f"container could not start: {error or state}", detail=error)
        if node and node in await self.unreachable_nodes(only=node):
            raise Misplaced(node, f"node {node} does not answer")

    async def task_error(self, service_id: str) -> str:
        try:
            task = await self.task(service_id)
        except (EngineError, EngineUnavailable):
            return ""
        status = (task or {}).get("Status") or {}
        return str(status.get("Err") or status.get("Message") or status.get("State") or "")

    async def place_again(self, container_id: str, avoid: set[str]) -> None:
        info = await self.manager.api("inspect_service", container_id)
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
        excluded = [f"node.hostname!={n}" for n in sorted(avoid)]
        placement["Constraints"] = [c for c in placement.get("Constraints") or [] if c not in ours] + excluded
        template["Placement"] = placement
        labels[LABEL_EXCLUDED] = json.dumps(excluded)
        template["ForceUpdate"] = int(template.get("ForceUpdate") or 0) + 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[str, str]] = loop.create_future()
        with self._lock:
            before = self._where.pop(container_id, None)
            if before is not None:
                self._earlier.setdefault(container_id, set()).add(before)
            self._starting[container_id] = (loop, fut)
        await update_service(self.manager, container_id, info, {**spec, "Labels": labels, "TaskTemplate": template})

    async def unreachable_nodes(self, timeout: float = 2.0, only: str = "") -> set[str]:
        async def answers(runtime: ContainerRuntime) -> bool:
            try:
                return await asyncio.wait_for(runtime.engine.ping(), timeout)
            except (asyncio.TimeoutError, EngineUnavailable):
                return False
        names = [only] if only in self.nodes else list(self.nodes)
        found = await asyncio.gather(*(answers(self.nodes[n]) for n in names))
        return {n for n, ok in zip(names, found) if not ok}
