"""The gateway application: configuration (CLI flags, env vars, config file) and the Tornado app.

    kernel-gateway-ext [--ip=…] [--port=…] [--auth-token=…] [--config=FILE]
    kernel-gateway-ext build-images [--force] [--base=IMAGE]
    kernel-gateway-ext keys create --user=NAME
    kernel-gateway-ext --generate-config   # a commented kernel_gateway_ext_config.py in `jupyter --config-dir`
    kernel-gateway-ext --help-all          # every option with its env var
"""
from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import ssl
import sys
from typing import Any

from tornado import httpserver, web
from traitlets import Bool, Dict, Float, Int, Type, Unicode
from traitlets.config import catch_config_error

from ._version import __version__
from .api import operations
from .api.access_log import AccessLog
from .api.base import NotFoundHandler
from .api.inflight import InFlight
from .api.jupyter import routes as jupyter_routes
from .api.jupyter.bridge import Bridges
from .api.page import routes as page_routes
from .api.page.live import LiveHub
from .api.server import BoundedHTTPServer, ServerSettings
from .api.skaha import routes as skaha_routes
from .api.v2 import routes as v2_routes
from .auth import Authenticator, Authorizer
from .auth.authenticator import ADMIN_USER
from .auth.hmac_v2 import SeenSignatures
from .auth.keypairs import KeyPairs
from .application import GatewayApplication, common_aliases, common_flags
from .config import env
from .errors import ImageMissing
from .folders import FolderManager
from .memtrim import MemoryTrim
from .metrics import Metrics
from .jobs import JobManager
from .kernels.jupyter_sessions import JupyterSessions
from .kernels.manager import GatewayKernelManager
from .kernels.specs import GatewayKernelSpecManager
from .provisioners.docker import DockerProvisioner
from .containers import close_cluster, current_backend
from .containers.engine import DockerEngine
from .containers.fleet import FLEET
from .containers.swarm import SwarmSettings
from .containers.lease import EngineLease, StateLock
from .reconcile import Reconciler
from .diskguard import DiskGuard, gateway_targets
from .replicas import Replicas
from .store import Store




class Gateway(ServerSettings, GatewayApplication):
    """kernel_gateway_ext: Jupyter kernels in Docker containers, served to JupyterLab."""

    name = "kernel-gateway-ext"
    version = __version__
    description = __doc__

    ip = env(Unicode("127.0.0.1", help="Interface to listen on."), "KGE_IP")
    port = env(Int(8888, help="Port to listen on (0: any free port)."), "KGE_PORT")
    base_url = env(Unicode("/", help="URL prefix of every route."), "KGE_BASE_URL")
    allow_origin = env(Unicode("", help="Access-Control-Allow-Origin for browsers ('*' for any)."), "KGE_ALLOW_ORIGIN")
    certfile = env(Unicode("", help="TLS certificate (PEM): serve https."), "KGE_CERTFILE")
    keyfile = env(Unicode("", help="TLS private key (PEM) of the certificate."), "KGE_KEYFILE")
    client_ca = env(
        Unicode("", help="CA bundle (PEM) for X.509 client certificates: a verified certificate's CN is the caller's user."),
        "KGE_CLIENT_CA",
    )
    local_kernels = env(
        Bool(False, help="With no Docker engine, run kernels as local processes of the gateway's user, for a "
                         "single-user set-up: only the gateway token's user gets them, never key-pair users. "
                         "Off: the gateway refuses to start without an engine."),
        "KGE_LOCAL_KERNELS",
    )
    require_docker = env(
        Bool(False, help="Refuse to start without a Docker engine, even with local_kernels."),
        "KGE_REQUIRE_DOCKER",
    )
    adopt = env(
        Bool(True, help="At start, take over the kernels and sessions an earlier process of this gateway id "
                        "left running (after kill -9, or a stop with keep_on_exit). Off: remove them."),
        "KGE_ADOPT",
    )
    keep_on_exit = env(
        Bool(False, help="On SIGTERM/SIGINT leave kernel and session containers running for the next process "
                         "to adopt (upgrades). Off: stop them all (nothing stays behind)."),
        "KGE_KEEP_ON_EXIT",
    )
    memory_trim_delay = env(
        Float(10.0, help="Seconds of quiet after kernels or sessions come or go before the gateway gives the memory "
                         "it freed back to the system (glibc's malloc_trim, off the event loop; under steady churn "
                         "at the latest 6 times this after the first change). 0: never."),
        "KGE_MEMORY_TRIM_DELAY",
    )
    kernel_manager_class = Type(GatewayKernelManager, help="The kernel store class.").tag(config=True)
    kernel_spec_manager_class = Type(GatewayKernelSpecManager, help="The kernelspec finder.").tag(config=True)
    authenticator_class = Type(Authenticator, help="Maps tokens to identities.").tag(config=True)
    authorizer_class = Type(Authorizer, help="Decides who may see and act on which kernels, jobs and folders.").tag(config=True)

    aliases = Dict(
        {
            **common_aliases,
            "ip": "Gateway.ip",
            "port": "Gateway.port",
            "base-url": "Gateway.base_url",
            "auth-token": "Authenticator.auth_token",
            "gateway-id": "DockerEngine.gateway_id",
            "replica-id": "Replicas.replica_id",
            "store-url": "Store.url",
        }
    )
    flags = Dict(
        {
            **common_flags,
            "require-docker": ({"Gateway": {"require_docker": True}}, "Fail if no Docker engine answers."),
            "local-kernels": ({"Gateway": {"local_kernels": True}},
                              "Without a Docker engine, run local-process kernels for the gateway token's user only."),
        }
    )
    subcommands = Dict(
        {
            "build-images": (
                "kernel_gateway_ext.build_images.BuildImagesApp",
                "Build the kernel images (no registry needed).",
            ),
            "keys": ("kernel_gateway_ext.auth.cli.KeysApp", "Create, list and revoke key pairs."),
        }
    )

    # The parts, made by initialize() (the composition root) before anything serves.
    store: Store
    replicas: Replicas
    folders: FolderManager
    jobs: JobManager
    keypairs: KeyPairs
    kernel_manager: GatewayKernelManager
    kernel_spec_manager: GatewayKernelSpecManager
    authenticator: Authenticator
    authorizer: Authorizer

    @property
    def classes(self) -> list[type]:  # type: ignore[override]
        return [Gateway, Authenticator, Authorizer, KeyPairs, Store, FolderManager, JobManager, GatewayKernelManager,
                GatewayKernelSpecManager, DockerProvisioner, DockerEngine, SwarmSettings, Replicas, DiskGuard]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.http_server: httpserver.HTTPServer | None = None
        self.docker_available = False
        self.warnings: list[str] = []
        self.bridges = Bridges(self)
        self.page_hub: LiveHub | None = None  # the web page's open pages (made with the web app)
        self.jupyter_sessions = JupyterSessions(None, "")
        self._stopping: asyncio.Future[None] | None = None
        self.lease: EngineLease | None = None
        self.terminals: dict[str, set[Any]] = {}  # kernel id -> its open terminal handlers
        self.signatures_seen = SeenSignatures()  # v2 replay guard
        self.state_lock: StateLock | None = None
        self.stopping = False
        self.in_flight = InFlight()  # the HTTP requests being served

    @catch_config_error
    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)  # config file, env vars and command line, as every subcommand
        if self._dispatching:  # a subcommand, or --generate-config
            return
        if not self.base_url.startswith("/"):
            self.base_url = "/" + self.base_url
        if not self.base_url.endswith("/"):
            self.base_url += "/"
        # The composition root: each part gets what it uses in its constructor.
        self.metrics = Metrics(self)  # reads the parts when scraped
        self.memory_trim = MemoryTrim(self.memory_trim_delay, self.log)
        self.store = Store(parent=self, log=self.log)
        self.replicas = Replicas(parent=self, log=self.log)
        self.store.home = self.replicas.replica_id  # records this replica writes are homed here
        self.keypairs = KeyPairs(parent=self, log=self.log, store=self.store)
        self.folders = FolderManager(parent=self, log=self.log, store=self.store)
        self.authenticator = self.authenticator_class(parent=self, log=self.log, keypairs=self.keypairs)
        self.authorizer = self.authorizer_class(parent=self, log=self.log)
        self.kernel_spec_manager = self.kernel_spec_manager_class(parent=self, log=self.log)
        # Local-process kernels need a connection file (it holds the key): in a private folder,
        # never the working directory (jupyter_client's default).
        runtime_dir = os.path.join(self.store.state_dir, "runtime")
        os.makedirs(runtime_dir, mode=0o700, exist_ok=True)
        self.kernel_manager = self.kernel_manager_class(
            parent=self, log=self.log, kernel_spec_manager=self.kernel_spec_manager, store=self.store,
            connection_dir=runtime_dir, derive_secret=self.keypairs.derive, observer=self.metrics.observe_kernel,
        )
        # One memory budget for the host: kernels and jobs draw from it.
        self.reconciler = Reconciler(self)
        self.jobs = JobManager(parent=self, log=self.log, store=self.store, folders=self.folders,
                               keypairs=self.keypairs, base_url=self.base_url, budget=self.kernel_manager.capacity,
                               on_expire=self.metrics.observe_job_expiry)
        self.disk_guard = DiskGuard(gateway_targets(self.kernel_manager, self.jobs), parent=self, log=self.log)

    # ---- the web app ----------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        b = self.base_url
        self.page_hub = LiveHub(self, self.page_sample_seconds)
        # Each dialect declares its own routes (jupyter_server's default_handlers pattern).
        routes: list[Any] = [
            *jupyter_routes.default_handlers(b), *operations.default_handlers(b), *v2_routes.default_handlers(b),
            *skaha_routes.default_handlers(b), *page_routes.default_handlers(b),
        ]
        return web.Application(
            routes,
            gateway=self,
            default_handler_class=NotFoundHandler,
            websocket_ping_interval=30,
            websocket_max_message_size=64 * 1024 * 1024,
            log_function=AccessLog(self.log, self.metrics, routes, b),
            cookie_secret=self.keypairs.derive("tornado-cookies", "kge"),
            page_hub=self.page_hub,
        )

    def status_model(self) -> dict[str, Any]:
        mgr = self.kernel_manager
        return {"docker": self.docker_available, "kernels": len(mgr.list()), "warnings": self.warnings,
                "pools": mgr.pool.status(),
                "pool_hits": mgr.pool.hits, "pool_misses": mgr.pool.misses}

    # ---- lifecycle ------------------------------------------------------------------------------
    async def check_docker(self) -> None:
        engine = DockerEngine.instance(parent=self)
        engine.call_observer = lambda method, seconds: self.metrics.docker_seconds.labels(method).observe(seconds)
        self.docker_available = await engine.ping()
        # Records are kept only for what can be adopted: container kernels.
        self.jupyter_sessions = JupyterSessions(self.store if self.docker_available else None, engine.gateway_id)
        self.kernel_spec_manager.docker_available = self.docker_available
        if self.docker_available:
            engine.replica_id = self.replicas.replica_id
            if self.replicas.enabled:  # the store's replica lease holds the id (replicas share the gateway id)
                self.reconciler.share_capacity()
                await self.replicas.join(self.store, self.url, self.reconciler.take_over)
            else:
                await self._take_lease(engine)
            await FLEET.refresh(current_backend(), force=True)
            for warning in [*await current_backend().ensure_network(), *await self.disk_guard.start(current_backend())]:
                self.warnings.append(warning)
                self.log.warning("%s", warning)
            await self.reconcile(engine)
            return
        msg = ("No Docker engine answers: kernels run as LOCAL PROCESSES without isolation or limits, "
               "for the gateway token's user only.")
        if self.require_docker or not self.local_kernels:
            raise SystemExit(f"{self.name}: no Docker engine answers. Start one, or pass --local-kernels to run "
                             "kernels as local processes of this user (single-user set-ups only).")
        # Local processes run as the gateway's user and can read its state: never for key-pair users.
        self.kernel_manager.local_only_owner = ADMIN_USER
        self.warnings.append(msg)
        self.log.warning("!" * 80)
        self.log.warning(msg)
        self.log.warning("!" * 80)

    async def _take_lease(self, engine: DockerEngine) -> None:
        """Hold the gateway id on the engine (another live gateway with it: refuse to start)."""
        lease = EngineLease(engine)
        try:
            await lease.acquire()
        except ImageMissing:
            warning = (f"gateway id {engine.gateway_id!r} is not leased on the engine (no image {lease.image}: "
                       "run build-images): a gateway elsewhere with the same id would not be noticed")
            self.warnings.append(warning)
            self.log.warning("%s", warning)
            return
        self.lease = lease

        async def renew() -> None:
            try:
                await lease.renew_after_reconnect()
            except Exception as e:  # noqa: BLE001 - keep serving; say loudly what is at risk
                self.log.error("could not take the gateway id lease again after the engine came back: %s", e)

        engine.on_reconnect(lambda: asyncio.ensure_future(renew()))

    async def reconcile(self, engine: DockerEngine) -> None:
        """Match this gateway id's containers with the store's records: adopt what a record owns,
        remove what nobody owns any more, drop records whose container is gone."""
        backend = current_backend()
        # Events missed while the engine was unreachable are made up for by re-reading state.
        backend.on_reconnect(lambda: asyncio.ensure_future(self.jobs.refresh()))
        await self.reconciler.adopt(self.replicas.replica_id, fresh_start=True)
        if self.kernel_manager.shared is not None:
            await self.kernel_manager.shared.sync()

    async def start_server(self) -> None:
        """Start listening (used by `start` and by in-process tests). A start that fails gives
        back what it took (the id's lock and lease, the engine, the store)."""
        try:
            await self._start_server()
        except BaseException:
            await self.stop_server()
            raise

    async def _start_server(self) -> None:
        ssl_context = self._ssl_context()  # configuration errors first, before the engine is touched
        self.kernel_manager.on_removal(self.bridges.forget_kernel)
        self.kernel_manager.on_change(self.memory_trim.soon)
        self.kernel_manager.on_output_released(self.memory_trim.soon)
        self.jobs.on_change(self.memory_trim.soon)
        self.bridges.on_close.append(self.memory_trim.soon)
        self.kernel_manager.on_removal(lambda kernel_id: self.jupyter_sessions.kernel_removed(kernel_id))
        lock_name = DockerEngine.instance(parent=self).gateway_id
        if self.replicas.enabled:
            lock_name += "." + self.replicas.replica_id
        self.state_lock = StateLock(self.store.state_dir, lock_name)
        self.state_lock.acquire()
        sockets = _bind(self.ip, self.port)  # first: a replica advertises its URL before it adopts
        self.port = sockets[0].getsockname()[1]
        await self.check_docker()
        app = self.make_app()
        self.http_server = BoundedHTTPServer(
            app, xheaders=False, ssl_options=ssl_context, max_body_size=self.max_request_body,
            idle_connection_timeout=self.header_timeout, body_timeout=self.body_timeout,
            max_connections=self.max_connections, max_per_address=self.max_connections_per_address)
        self.http_server.add_sockets(sockets)
        self.metrics.loop_lag.start()
        self.log.info("kernel_gateway_ext %s serving at %s", __version__, self.url)
        if self.docker_available:
            self.kernel_manager.pool.fill()

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.certfile:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.certfile, self.keyfile or None)
        if self.client_ca:
            # Optional: token callers need no certificate; a presented one must verify.
            ctx.load_verify_locations(self.client_ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
            self.authenticator.trust_issuers([tuple(ca["subject"]) for ca in ctx.get_ca_certs()])
        return ctx

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{'https' if self.certfile else 'http'}://{host}:{self.port}{self.base_url}"

    async def stop_server(self) -> None:
        """Stop listening, shut every kernel down (their containers go), release the engine."""
        self.stopping = True  # requests on connections still open get a 503 (retried elsewhere)
        self.metrics.loop_lag.stop()
        self.memory_trim.stop()
        self.disk_guard.stop()
        if self.http_server is not None:
            self.http_server.stop()
        # Before anything they may need goes (their kernels, the store): an answer cut after its
        # headers cannot be sent again by anyone, unlike a 503.
        left = await self.in_flight.finished(self.stop_grace)
        if left:
            self.log.warning("%d requests still being served after %.0f s: their connections are closed", left,
                             self.stop_grace)
        self.bridges.close_all()
        if self.page_hub is not None:
            self.page_hub.close()
        # A replica's kernels outlive it: a live replica takes them over (leave()).
        keep = (self.keep_on_exit or self.replicas.enabled) and self.docker_available
        await self.kernel_manager.shutdown_everything(keep=keep)
        if self.docker_available:
            await self.jobs.shutdown(keep=keep)
            folders = current_backend().ipc_folders
            if folders is not None:
                await asyncio.to_thread(folders.close)
        await self.jupyter_sessions.flush()
        if self.http_server is not None:
            await self.http_server.close_all_connections()
            self.http_server = None
        if self.lease is not None:
            await self.lease.release()
            self.lease = None
        await self.replicas.leave()
        close_cluster()
        if DockerEngine.initialized():
            DockerEngine.instance().close()
        await self.store.aclose()
        if self.state_lock is not None:
            self.state_lock.release()
            self.state_lock = None

    def start(self) -> None:
        if self.subapp is not None:
            self.subapp.start()
            return
        if self.generate_config:
            self.write_default_config()
            return
        asyncio.run(self._main())

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        def on_signal(sig: int) -> None:
            if not stop.done():
                stop.set_result(sig)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        await self.start_server()
        # What exists now (modules, configuration, the app: ~50,000 objects) lives as long as the
        # process: kept out of the collector's full passes, each of which walked all of it (~9 ms
        # of the loop per pass; 12-23 ms seen during 50 starts at once). Here, not in start_server,
        # which tests run in their own process.
        gc.freeze()
        print(f"kernel_gateway_ext is running at {self.url}", flush=True)
        if self.authenticator.generated_token:
            print(f"    auth token (generated): {self.authenticator.auth_token}", flush=True)
        print(f"    JupyterLab: jupyter lab --gateway-url={self.url} --GatewayClient.auth_token=<token>", flush=True)
        print(f"    web page:   {self.url} (sign in with a key pair, or the token as the secret key)", flush=True)
        sig = await stop
        self.log.info("Received %s: shutting down kernels", signal.Signals(sig).name)
        await self.stop_server()


def _bind(ip: str, port: int) -> list[socket.socket]:
    from tornado.netutil import bind_sockets

    return bind_sockets(port, address=ip or None)


def main(argv: list[str] | None = None) -> None:
    app = Gateway.instance()
    app.initialize(argv)
    app.start()


if __name__ == "__main__":
    main(sys.argv[1:])
