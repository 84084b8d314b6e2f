"""DockerProvisioner: a jupyter_client kernel provisioner that runs each kernel in a container.

Registered as the ``kge-docker-provisioner`` entry point of ``jupyter_client.kernel_provisioners``,
so any jupyter_client KernelManager (our gateway's, or a plain jupyter_server's) picks it from a
kernelspec's ``metadata.kernel_provisioner``.

What it does differently from gateway_provisioners / Enterprise Gateway:
- it describes containers as ContainerSpecs to the container backend (containers/backend.py): every
  engine call runs off the event loop, container state arrives by the engine's event stream (no
  polling);
- restart keeps the container: ``kge-nanny`` (the container's main process) restarts the kernel
  in place, so the address, ports and key stay and open client connections keep working;
- the kernel gets only its spec's env, ``KERNEL_*`` and an allow-list; memory, CPU and pids are
  always bounded; privileges dropped; ZMQ ports are never published on the host;
- the connection key reaches the container on its stdin at start (kge-nanny writes the file, its user's only),
  or as a file put in before (a cluster's secret); never in env or labels.
"""
from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Bool, Dict, Float, Int, List, Unicode

from ..config import apply_env, env
from ..tasks import gather_all
from ..errors import ContainerFailed, EngineError, EngineUnavailable, GatewayError, KernelStartFailed
from ..containers.limits import KernelLimits, parse_memory
from ..containers.ipc import endpoints
from ..containers.spec import (
    LABEL_CONNECTION, LABEL_KERNEL_ID, LABEL_KERNELSPEC, LABEL_OWNER, BindMount, ContainerSpec,
)
from .connection import CONNECTION_DIR, CONNECTION_FILE, CONTAINER_PORTS, SECRET_DIR, KernelConnection
from .container import KernelContainer
from .launch import LAUNCH_REQUEST, LaunchRequest

ENV_FILE = f"{CONNECTION_DIR}/env.json"  # variables given at hand-out, read by kge-nanny at each kernel start
NANNY = "/usr/local/bin/kge-nanny"



class DockerProvisioner(KernelConnection, KernelProvisionerBase):
    """Runs the kernel in a Docker container supervised by kge-nanny."""

    image = Unicode("kge-kernel:latest", help="Image the kernel runs in (kernelspec config).").tag(
        config=True
    )
    mem_limit = env(Unicode("2g", help="Default memory limit of a kernel container."), "KGE_KERNEL_MEM_LIMIT")
    cpu_limit = env(Float(1.0, help="Default CPU limit (cores) of a kernel container."), "KGE_KERNEL_CPU_LIMIT")
    pids_limit = env(Int(512, help="Default process limit of a kernel container."), "KGE_KERNEL_PIDS_LIMIT")
    user = env(Unicode("1000:1000", help="uid:gid the kernel runs as."), "KGE_KERNEL_USER")
    work_dir = Unicode("/home/work", help="The kernel's working directory.").tag(config=True)
    network = env(
        Unicode("", help="Docker network for kernel containers (empty: DockerEngine.network, isolated)."),
        "KGE_KERNEL_NETWORK",
    )
    extra_env = Dict(
        value_trait=Unicode(), help="Variables every kernel container gets (not secrets: they show in docker inspect)."
    ).tag(config=True)
    launch_timeout = env(
        Float(60.0, help="Seconds a container may take to be created and started."), "KGE_KERNEL_LAUNCH_TIMEOUT"
    )
    preload_modules = List(
        Unicode(),
        help="Modules kge-nanny imports once; kernels are then forked from it (fast restarts).",
    ).tag(config=True)
    block_modules = List(
        Unicode(), help="Modules the kernel may not import (debugpy when the spec has no debugger)."
    ).tag(config=True)
    use_init = Bool(True, help="Run docker's init (tini) as PID 1 to reap zombies.").tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        apply_env(self, set(kwargs))
        self.container_id: str | None = None
        self.owner: str = ""
        self.limits = KernelLimits()
        self.mounts: list[BindMount] = []
        self.extra_labels: dict[str, str] = {}
        # Folders bound in after the container started (a pooled kernel handed out): a container
        # that dies and is started again gets a new mount namespace, so they are bound again.
        self.hot_mounts: list[BindMount] = []
        self.ipc_dir = ""  # a kernel without a network: its sockets' folder on the host (containers/ipc.py)
        self._exit_code: int | None = None
        self._oom_killed = False
        self._exited = asyncio.Event()
        self._restarting = False
        self._env: dict[str, str] = {}
        self.exit_reason = ""  # why the container died, when the backend knows more than its exit code
        # Called with the exit code when the container dies (the kernel store marks it dead).
        self.exit_callback: Callable[[int | None], None] | None = None
        self.container = KernelContainer(self)  # what callers do inside it, beside the lifecycle

    # ---- state --------------------------------------------------------------------------------
    @property
    def exited(self) -> bool:
        return self._exit_code is not None

    @property
    def node(self) -> str:
        return self.backend.node_of(self.container_id) if self.container_id else ""

    @property
    def has_process(self) -> bool:
        return self.container_id is not None

    @property
    def oom_killed(self) -> bool:
        return self._oom_killed

    async def poll(self) -> int | None:
        if self._restarting:
            return 0  # the old kernel process counts as ended; the container stays
        return self._exit_code

    async def wait(self) -> int | None:
        if self._restarting or self.container_id is None:
            return 0
        if self._exit_code is None:
            await self._exited.wait()
        return self._exit_code

    def _on_event(self, event: dict[str, Any]) -> None:
        action = event.get("Action") or event.get("status") or ""
        if action == "oom":
            self._oom_killed = True
        elif action == "die":
            attrs = (event.get("Actor") or {}).get("Attributes") or {}
            try:
                self._exit_code = int(attrs.get("exitCode", "-1"))
            except ValueError:
                self._exit_code = -1
            self.exit_reason = str(attrs.get("kge.reason") or "")  # a cluster's lost node says why
            self._exited.set()
            self.log.info("Kernel %s: container exited with %s", self.kernel_id, self._exit_code)
            if self.exit_callback is not None:
                self.exit_callback(self._exit_code)
        elif action == "start":
            self._exit_code, self.exit_reason = None, ""
            self._exited.clear()
        elif action == "destroy":
            died_now = self._exit_code is None and not self._exited.is_set()
            if self._exit_code is None:
                self._exit_code = -1
            self._exited.set()
            if died_now and self.exit_callback is not None:
                self.exit_callback(self._exit_code)

    async def _refresh_state(self) -> None:
        """Read the container's state once (after the event stream reconnects)."""
        if self.container_id is None:
            return
        try:
            state = await self.backend.state(self.container_id)
        except GatewayError:
            return
        if state is None:
            self._on_event({"Action": "destroy"})
            return
        self._oom_killed = self._oom_killed or bool(state.get("OOMKilled"))
        if state.get("Running"):
            self._exit_code = None
            self._exited.clear()
        elif self._exit_code is None and not self._exited.is_set():
            # It died while the event stream was away: report it as the missed event would have.
            self._on_event({"Action": "die", "Actor": {"Attributes": {"exitCode": str(state.get("ExitCode", -1)),
                                                                      "kge.reason": state.get("Error") or ""}}})
        else:
            self._exit_code = int(state.get("ExitCode", -1))
            self._exited.set()

    def _watch(self) -> None:
        assert self.container_id is not None
        self.backend.subscribe(self.container_id, self._on_event)
        self.backend.on_reconnect(lambda: asyncio.ensure_future(self._refresh_state()), self.container_id)

    # ---- signals --------------------------------------------------------------------------------
    async def _signal_container(self, signum: int) -> None:
        if self.container_id is None:
            return
        await self.backend.signal(self.container_id, signum)

    async def send_signal(self, signum: int) -> None:
        if signum == 0:
            return  # "is it alive?" is answered by poll()
        await self._signal_container(signum)

    async def kill(self, restart: bool = False) -> None:
        await self._signal_container(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self._signal_container(signal.SIGTERM)

    async def shutdown_requested(self, restart: bool = False) -> None:
        # The kernel was just sent a shutdown_request. For a restart the nanny lets it finish
        # and starts a fresh kernel in the same container; otherwise the container stops.
        if restart:
            self._restarting = True
            await self._signal_container(signal.SIGHUP)
        else:
            await self._signal_container(signal.SIGTERM)

    # ---- launch ---------------------------------------------------------------------------------
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        request = kwargs.pop(LAUNCH_REQUEST, None)
        if not isinstance(request, LaunchRequest):  # started by jupyter_client alone: nothing asked
            request = LaunchRequest(owner="", kernel_name=str(getattr(self.parent, "kernel_name", "") or ""))
        self.owner = request.owner
        self.limits = request.limits
        self.mounts = list(request.mounts)
        self.extra_labels = dict(request.labels)
        # The container's environment is the request's, never jupyter_client's (the gateway's own).
        kwargs.pop("env", None)
        kwargs = await super().pre_launch(env={**request.env, **self.extra_env, **request.user_env}, **kwargs)
        self._env = dict(kwargs["env"])
        km = self.parent
        if km is not None and not self._restarting:
            km.ip = "127.0.0.1"  # replaced by the container's address in launch_kernel
            for name, port in CONTAINER_PORTS.items():
                setattr(km, name, port)
        kwargs["cmd"] = self._kernel_cmd(kwargs.get("cmd") or self.kernel_spec.argv)
        return kwargs

    def _kernel_cmd(self, argv: list[str]) -> list[str]:
        return [a.replace("{connection_file}", CONNECTION_FILE) for a in argv]

    def _nanny_cmd(self, cmd: list[str]) -> list[str]:
        opts: list[str] = []
        for mod in self.preload_modules:
            opts += ["--preload", mod]
        for mod in self.block_modules:
            opts += ["--block", mod]
        if self.backend.files_read_only:  # the kernel rewrites its connection file: the nanny copies it
            opts += ["--copy-in", f"{SECRET_DIR}/connection.json", CONNECTION_FILE]
        elif self.backend.takes_stdin:  # the nanny writes it from what start() hands it
            opts += ["--stdin-to", CONNECTION_FILE]
        return [NANNY, *opts, "--env-file", ENV_FILE, "--", *cmd]

    def container_env(self) -> dict[str, str]:
        env_ = dict(self._env)
        env_.setdefault("HOME", self.work_dir)
        env_["KERNEL_ID"] = str(self.kernel_id)
        return env_

    def _labels(self) -> dict[str, str]:
        conn: dict[str, str | int] = {**CONTAINER_PORTS, "transport": self._transport,
                                      "signature_scheme": self._signature_scheme()}
        labels = {
            LABEL_KERNEL_ID: str(self.kernel_id),
            LABEL_OWNER: self.owner,
            LABEL_KERNELSPEC: str(getattr(self.parent, "kernel_name", "") or ""),
            LABEL_CONNECTION: json.dumps(conn, sort_keys=True),
        }
        labels.update(self.extra_labels)
        return labels

    def resolve(self, limits: KernelLimits) -> KernelLimits:
        """Asked limits with this kernelspec's defaults for the rest: what the container gets."""
        return limits.resolve(mem_default=parse_memory(self.mem_limit), cpu_default=self.cpu_limit,
                              pids_default=self.pids_limit)

    def container_spec(self, cmd: list[str]) -> ContainerSpec:
        limits = self.resolve(self.limits)
        return ContainerSpec(
            image=self.image, command=self._nanny_cmd(cmd), kind="kernel", labels=self._labels(),
            env=self.container_env(), user=self.user, working_dir=self.work_dir, run_dir=CONNECTION_DIR,
            hostname=f"kernel-{str(self.kernel_id)[:8]}", memory_bytes=limits.memory_bytes or 0,
            cpus=limits.cpus or 0.0, pids=limits.pids or 0, gpus=limits.gpus, mounts=list(self.mounts) + self._ipc_mount(),
            network="none" if self.ipc_dir else self.network or None, init=self.use_init,
            **self._connection_delivery(),
        )

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        if self._restarting and self.container_id is not None:
            # The nanny restarts the kernel in this same container: same address and key.
            self._restarting = False
            if self._exit_code is not None:
                # The container itself had died: start it again. Its address usually stays but
                # is re-read; the kernel store reconnects its sockets if it moved.
                await self.backend.start_again(self.container_id)
                self._exit_code, self._oom_killed = None, False
                self._exited.clear()
                await self._read_address()
                await self._attach_hot_mounts()
            return self.connection_info
        backend = self.backend
        try:
            await self._make_ipc_dir()
            spec = self.container_spec(cmd)
            created = await backend.create(spec, self.launch_timeout)
            self.container_id = created
            self._exit_code = None
            self._exited.clear()
            self._watch()
            await backend.start(created, self.launch_timeout, spec.image, stdin=spec.stdin)
            await self._read_address()
        except BaseException as e:
            if self.container_id is not None:
                await backend.discard(self.container_id)
                self.container_id = None
            await self._remove_ipc_dir()
            if isinstance(e, ContainerFailed):
                raise KernelStartFailed(e.message) from e
            raise
        self.log.info("Kernel %s: started container %s for %s", self.kernel_id, created[:12], self.owner or "-")
        return self.connection_info

    # ---- hand-out: a pooled kernel made what a request asks ------------------------------------
    def env_for(self, request: LaunchRequest) -> dict[str, str]:
        """What a cold start for `request` would add to (or change in) this container's env."""
        wanted = {**request.env, **self.extra_env, **request.user_env}
        return {k: v for k, v in wanted.items() if self._env.get(k) != v}

    async def specialise(self, request: LaunchRequest) -> None:
        """Make this running (pooled) kernel's container what a cold start for `request` makes: its
        limits, its folders at their targets (both at once). Its env is set by the caller, in the
        live kernel and in ENV_FILE for later kernel processes (env_for says what). Raises
        ContainerFailed; the caller then discards the kernel."""
        assert self.container_id is not None
        backend, cid = self.backend, self.container_id
        limits = self.resolve(request.limits)
        steps = []
        if limits != self.resolve(self.limits):
            steps.append(backend.update_limits(cid, memory_bytes=limits.memory_bytes or 0, cpus=limits.cpus or 0.0,
                                               pids=limits.pids or 0))
        if request.mounts:
            steps.append(backend.attach_mounts(cid, list(request.mounts)))
        await gather_all(*steps)
        self.owner, self.limits = request.owner, request.limits
        self.mounts = self.hot_mounts = list(request.mounts)
        self._env.update(self.env_for(request))

    async def _attach_hot_mounts(self) -> None:
        if self.hot_mounts and self.container_id is not None:
            try:
                await self.backend.attach_mounts(self.container_id, self.hot_mounts)
            except ContainerFailed as e:
                raise KernelStartFailed(e.message) from e

    async def cleanup(self, restart: bool = False) -> None:
        if restart or self.container_id is None:
            return
        cid, self.container_id = self.container_id, None
        self.backend.unsubscribe(cid)
        try:
            await self.backend.remove(cid)
        except (EngineUnavailable, EngineError) as e:
            self.log.warning("Kernel %s: could not remove container %s: %s", self.kernel_id, cid[:12], e)
            return  # its folder goes with it, at the next start's reconciliation
        await self._remove_ipc_dir()

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return max(recommended, 4.0)

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info = {**info, "connection_info": {k: v for k, v in self.connection_info.items() if k != "key"}}
        info.update(container_id=self.container_id, owner=self.owner, image=self.image,
                    hot_mounts=[vars(m) for m in self.hot_mounts], ipc_dir=self.ipc_dir)
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        """Take over a kernel container another gateway process started (adoption after a crash
        or an upgrade): follow its events, read its state and, when it runs, its address."""
        info = {"kernel_id": self.kernel_id, "connection_info": {}, **provisioner_info}
        await super().load_provisioner_info(info)
        self.container_id = provisioner_info.get("container_id")
        self.owner = provisioner_info.get("owner", "")
        self.hot_mounts = [BindMount(**m) for m in provisioner_info.get("hot_mounts") or []]
        self.ipc_dir = provisioner_info.get("ipc_dir") or ""
        if not self.container_id:
            return
        self._watch()
        await self._refresh_state()
        if self._exit_code is None:
            await self._read_address()
        else:  # a dead container has no address until a restart starts it again
            self._set_address(endpoints(self.ipc_dir) if self.ipc_dir else "127.0.0.1")
