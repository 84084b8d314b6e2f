"""The one Docker engine connection a gateway process shares.

Why a shared object: every Docker call must run off the event loop (the systems we replace call
docker-py synchronously from it and slow every request once a container kernel runs). Calls go
to a bounded thread pool; container state comes from one ``docker events`` stream read in a
thread and handed to the loop, so nobody polls the engine.
"""
from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types
from docker.models.containers import Container
from traitlets import Bool, Float, Int, Unicode
from traitlets.config import SingletonConfigurable

from ..config import apply_env, env
from ..errors import ContainerMissing, EngineError, EngineUnavailable, GatewayError, ImageMissing
from . import hostguard
from .backend import EventCallback
from .spec import LABEL_GATEWAY, LABEL_MANAGED, LABEL_REPLICA
from .subscribers import Subscribers

T = TypeVar("T")




ICC_OPTION = "com.docker.network.bridge.enable_icc"


def translate(e: Exception) -> GatewayError:
    """The one place a docker-py error becomes one of errors.py's."""
    if isinstance(e, docker.errors.APIError):
        text = str(e.explanation or e)
        if isinstance(e, docker.errors.ImageNotFound):
            return ImageMissing(text, e.status_code)
        if isinstance(e, docker.errors.NotFound):
            return ContainerMissing(text, e.status_code)
        return EngineError(text, e.status_code)
    return EngineUnavailable(f"Docker engine unavailable: {type(e).__name__}")


class DockerEngine(SingletonConfigurable):
    """Docker client, thread pool and event stream, shared by all provisioners of a process."""

    docker_url = env(
        Unicode("", help="Docker engine URL (unix:// or tcp://). Empty: DOCKER_HOST or the local socket."),
        "KGE_DOCKER_URL",
    )
    gateway_id = env(
        Unicode("kge", help="Names this gateway in container labels. Gateways sharing an engine need distinct ids."),
        "KGE_GATEWAY_ID",
    )
    network = env(
        Unicode("kge-isolated", help="Docker network of every kernel and session container. The gateway creates it "
                "with inter-container traffic off: no container can reach another's ports (kernels listen on every "
                "interface; iopub needs no key to read), while the gateway reaches each one. 'bridge' is Docker's "
                "default network, where containers reach each other."),
        "KGE_NETWORK",
    )
    network_egress = env(
        Bool(True, help="Containers may open connections beyond the host (package installs, data downloads). "
                        "Off: the network is created internal (no route out); the gateway still reaches them."),
        "KGE_NETWORK_EGRESS",
    )
    ipc_dir = env(
        Unicode("/run/kge-ipc", help="With network_egress off, kernels get no network at all (network_mode none: "
                                     "less engine work per start, nothing to connect to) and talk ZMQ over IPC "
                                     "sockets in a folder of their own under this one (a short path: socket paths "
                                     "hold 108 bytes), bound into their container. Needs a gateway on the "
                                     "engine's host that is root or has CAP_CHOWN, CAP_DAC_OVERRIDE and CAP_FOWNER "
                                     "(a gateway in a container mounts it at the same path). "
                                     "Empty: kernels use TCP on the internal network."),
        "KGE_IPC_DIR",
    )
    guard_host = env(
        Bool(True, help="Refuse new connections from the containers' network to the host itself (an iptables "
                        "and ip6tables INPUT rule on its bridge), so a kernel cannot reach the host's services that "
                        "listen on every interface: this gateway's API, a database, an engine on TCP; and what it "
                        "sends to link-local addresses (a DOCKER-USER rule): a cloud's metadata service. Needs "
                        "CAP_NET_ADMIN in the engine's host's network namespace; otherwise the gateway warns at start."),
        "KGE_GUARD_HOST",
    )
    log_max_size = env(
        Unicode("10m", help="Largest log a container keeps (Docker json-file max-size; two files are kept). "
                            "A kernel printing forever must not fill the engine's disk."),
        "KGE_CONTAINER_LOG_MAX_SIZE",
    )
    read_only_rootfs = env(
        Bool(False, help="Run kernel and session containers with a read-only root filesystem: only /tmp (tmpfs), "
                         "the home folder and the gateway's /run/kge (volumes removed with the container) and the "
                         "mounted folders are writable. Code cannot change the image's programs for itself."),
        "KGE_READ_ONLY_ROOTFS",
    )
    lease_image = env(
        Unicode("kge-kernel:latest", help="Image of the tiny container that holds this gateway id on the engine "
                                          "while the gateway lives (any image with `cat`)."),
        "KGE_LEASE_IMAGE",
    )
    backend = env(
        Unicode("docker", help="Where containers run: 'docker' (this engine) or 'swarm' (a Docker Swarm cluster "
                               "whose manager is this engine; see SwarmBackend's settings)."),
        "KGE_CONTAINER_BACKEND",
    )
    max_workers = Int(16, help="Threads for Docker calls (each call blocks one).").tag(config=True)
    max_long_calls = Int(8, help="Threads for calls that last as long as a user's command (v2 batch mode); "
                                 "more such commands wait for one.").tag(config=True)
    call_timeout = Float(60.0, help="Seconds before a Docker API call is abandoned.").tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        apply_env(self, set(kwargs))
        self._client: docker.DockerClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="docker")
        # Calls that last as long as a user's command (batch execs): their own threads, so that
        # sixteen long commands cannot starve every other Docker call of the gateway.
        self._long_pool = ThreadPoolExecutor(max_workers=self.max_long_calls, thread_name_prefix="docker-long")
        self._subscribers = Subscribers()
        self.replica_id = ""  # set by the gateway when it is one of several replicas
        self._reconnect_callbacks: list[tuple[asyncio.AbstractEventLoop, Callable[[], object], str | None]] = []
        # Called in the events thread with every event (a cluster backend maps them to its services).
        self.event_listeners: list[EventCallback] = []
        self.lost_listeners: list[Callable[[], None]] = []  # called in the events thread when the stream breaks
        self._lock = threading.Lock()
        self._events_thread: threading.Thread | None = None
        self._events_stream: Any = None
        self._closed = False

    def our_labels(self) -> dict[str, str]:
        """The labels every container (or service) of this gateway carries."""
        labels = {LABEL_MANAGED: "true", LABEL_GATEWAY: self.gateway_id}
        if self.replica_id:
            labels[LABEL_REPLICA] = self.replica_id
        return labels

    @property
    def is_local(self) -> bool:
        """The engine runs on this machine (its socket): host paths here are its paths."""
        url = self.docker_url or os.environ.get("DOCKER_HOST", "")
        return not url or url.startswith("unix://")

    # ---- the client -------------------------------------------------------------------------
    def _make_client(self) -> docker.DockerClient:
        kw: dict[str, Any] = {"timeout": int(self.call_timeout), "max_pool_size": self.max_workers}
        if self.docker_url:
            return docker.DockerClient(base_url=self.docker_url, **kw)
        return docker.from_env(**kw)

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    async def run(self, fn: Callable[..., T], *args: Any, method: str = "call", **kwargs: Any) -> T:
        """Run a blocking Docker call in the pool (timed as `method` for metrics).
        Connection failures become EngineUnavailable."""
        began = time.monotonic()
        try:
            return await self._in(self._pool, functools.partial(fn, *args, **kwargs))
        finally:
            if self.call_observer is not None:
                self.call_observer(method, time.monotonic() - began)

    async def run_long(self, fn: Callable[[], T]) -> T:
        """Like `run`, in the pool for calls that last as long as a user's command."""
        return await self._in(self._long_pool, fn)

    @staticmethod
    async def _in(pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn)
        except docker.errors.DockerException as e:
            raise translate(e) from e
        except (ConnectionError, OSError) as e:
            raise EngineUnavailable(f"Docker engine unavailable: {type(e).__name__}") from e

    def rootfs(self, home: str, run_dir: str) -> tuple[dict[str, Any], list[docker.types.Mount]]:
        """Host-config entries and mounts for the root filesystem option (nothing when it is off).
        Volumes, not tmpfs, where the gateway puts files (the engine copies into a read-only
        container only onto its volumes)."""
        if not self.read_only_rootfs:
            return {}, []
        writable = [docker.types.Mount(home, None, type="volume"), docker.types.Mount(run_dir, None, type="volume")]
        return {"read_only": True, "tmpfs": {"/tmp": "rw,nosuid,nodev,mode=1777"}}, writable

    def log_config(self) -> docker.types.LogConfig:
        """Every container's log driver: bounded on disk, still readable with `docker logs`."""
        return docker.types.LogConfig(type="json-file", config={"max-size": self.log_max_size, "max-file": "2"})

    async def ensure_network(self) -> list[str]:
        """Create the containers' network if it is missing; warnings when an existing one lets
        containers reach each other or differs in egress from what is configured."""
        name = self.network
        if not name or name == "bridge":
            return [f"containers run on Docker's default network ({name or 'bridge'}): they can reach each other"]

        def ensure() -> list[str]:
            api = self.client.api
            warnings = []
            try:
                net = api.inspect_network(name)
            except docker.errors.NotFound:
                try:
                    api.create_network(name, driver="bridge", internal=not self.network_egress,
                                       options={ICC_OPTION: "false"}, labels={"org.kge.managed": "true"},
                                       check_duplicate=True)
                except docker.errors.APIError as e:
                    if e.status_code != 409:  # 409: another gateway made it at the same moment
                        raise
                net = api.inspect_network(name)
            else:
                if (net.get("Options") or {}).get(ICC_OPTION) != "false":
                    warnings.append(f"network {name} lets containers reach each other ({ICC_OPTION} is not false)")
                if bool(net.get("Internal")) == self.network_egress:
                    warnings.append(f"network {name} {'has no' if net.get('Internal') else 'has'} egress, unlike "
                                    f"network_egress={self.network_egress}; remove it to have it made again")
            bridge = hostguard.bridge_of(net)
            if self.guard_host and bridge:
                warnings += hostguard.guard(bridge)
            return warnings

        return await self.run(ensure, method="ensure_network")

    # Set by the app for metrics: called with (method, seconds) after each API call.
    call_observer: Callable[[str, float], None] | None = None

    async def api(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call docker-py's low-level `APIClient.<method>` in the pool (the client itself is made
        there too: its first use negotiates the API version over the socket)."""
        return await self.run(lambda: getattr(self.client.api, method)(*args, **kwargs), method=method)

    def ping_sync(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False

    async def ping(self) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.ping_sync)

    async def list_ours(self, all_gateways: bool = False, **labels: str) -> list[Container]:
        """Containers labelled as ours (this gateway's unless all_gateways)."""
        filters = [f"{LABEL_MANAGED}=true"]
        if not all_gateways:
            filters.append(f"{LABEL_GATEWAY}={self.gateway_id}")
        filters += [f"{k}={v}" for k, v in labels.items()]
        return await self.run(lambda: self.client.containers.list(all=True, filters={"label": filters}))

    async def labelled_images(self, label: str) -> list[tuple[list[str], dict[str, str], str]]:
        """(tags, labels, id) of the local images that carry `label`."""
        images = await self.run(lambda: self.client.images.list(filters={"label": label}))
        return [(list(img.tags), dict(img.labels or {}), str(img.id)) for img in images]

    async def remove(self, container_id: str) -> None:
        """Remove a container whatever its state; a missing one is already removed."""
        try:
            await self.api("remove_container", container_id, force=True, v=True)
        except ContainerMissing:
            pass
        except EngineError as e:
            # "removal already in progress" means another caller is doing our job.
            if "already in progress" not in e.message:
                raise

    # ---- events -----------------------------------------------------------------------------
    def subscribe(self, container_id: str, callback: EventCallback) -> None:
        """Call `callback(event)` on the current loop for each event of `container_id`."""
        self._subscribers.add(container_id, callback)
        self._ensure_events_thread()

    def unsubscribe(self, container_id: str, callback: EventCallback | None = None) -> None:
        if self._subscribers.remove(container_id, callback):
            with self._lock:  # a container's reconnect callbacks go with its last subscriber (no growth with churn)
                self._reconnect_callbacks = [r for r in self._reconnect_callbacks if r[2] != container_id]

    def on_reconnect(self, callback: Callable[[], object], container_id: str | None = None) -> None:
        """Call `callback()` on the current loop whenever the event stream (re)connects; one
        registered for a container is dropped when that container is unsubscribed."""
        with self._lock:
            self._reconnect_callbacks.append((asyncio.get_running_loop(), callback, container_id))
        self._ensure_events_thread()

    def _ensure_events_thread(self) -> None:
        with self._lock:
            if self._events_thread is None or not self._events_thread.is_alive():
                self._closed = False
                self._events_thread = threading.Thread(
                    target=self._read_events, name="docker-events", daemon=True
                )
                self._events_thread.start()

    def _read_events(self) -> None:
        """Blocking reader of `docker events`, reconnecting with backoff while not closed."""
        backoff = 0.5
        first = True
        while not self._closed:
            try:
                stream = self.client.events(
                    decode=True,
                    filters={"type": "container", "label": f"{LABEL_GATEWAY}={self.gateway_id}"},
                )
                self._events_stream = stream
                if not first:
                    self._dispatch_reconnect()
                first = False
                backoff = 0.5
                for event in stream:
                    self._dispatch(event)
            except Exception as e:  # noqa: BLE001 - the engine went away; reconnect
                if self._closed:
                    return
                self.log.warning("Docker event stream of %s lost (%s); reconnecting", self.docker_url or "the engine",
                                 type(e).__name__)
                first = False
                for lost in list(self.lost_listeners):
                    lost()
            if not self._closed:
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _dispatch(self, event: dict[str, Any]) -> None:
        for listener in self.event_listeners:
            listener(event)
        cid = (event.get("Actor") or {}).get("ID") or event.get("id")
        if not cid:
            return
        self._subscribers.deliver(cid, event)

    def _dispatch_reconnect(self) -> None:
        with self._lock:
            callbacks = list(self._reconnect_callbacks)
        for loop, cb, _ in callbacks:
            if not loop.is_closed():
                loop.call_soon_threadsafe(cb)

    def close(self) -> None:
        """Stop the event thread and the pool (containers are untouched)."""
        self._closed = True
        stream = self._events_stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._long_pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None
        if type(self)._instance is self:  # a cluster's node engines are not the process's engine
            type(self).clear_instance()
