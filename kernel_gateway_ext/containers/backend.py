"""The container backend: everything the kernel provisioner and the Skaha job manager ask of a
container engine, as one interface. `ContainerRuntime` (runtime.py) is the Docker implementation,
over the process's one `DockerEngine`; a cluster engine is a second implementation of this Protocol,
chosen in `containers.current_backend()`, with no change to the provisioner, the job manager, the
stores or the dialects. Only the composition root (app.py) and containers/ itself name the engine.

Containers are named by the id the backend gave them; errors are errors.py's (ContainerFailed for a
launch, ContainerMissing, EngineError, EngineUnavailable), never the engine library's."""
from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .ipc import IpcFolders
from .spec import BindMount, ContainerSpec

EventCallback = Callable[[dict[str, Any]], None]  # Docker's event shape: Action, Actor.Attributes


@dataclass(frozen=True)
class Usage:
    memory: int = 0  # bytes in use, page cache excluded
    memory_max: int = 0
    cpu_ns: int = 0  # CPU time used
    cores: float = 0.0  # cores in use now (from the engine's two samples)


@dataclass(frozen=True)
class Owned:
    """One of our containers as the backend lists it (a container, or a cluster's service)."""

    id: str
    labels: dict[str, str]

    @property
    def short_id(self) -> str:
        return self.id[:12]


@dataclass(frozen=True)
class Node:
    """A machine containers run on: its name (kernel and session info show it) and its size."""

    name: str
    memory: int  # bytes
    cpus: float
    ready: bool = True


class Terminal(Protocol):
    """An interactive process with a TTY in a container: a non-blocking socket the loop watches."""

    sock: socket.socket

    async def resize(self, rows: int, cols: int) -> None: ...

    async def ended(self) -> bool: ...  # its process has run and exited (False too before it starts)

    def close(self) -> None: ...


class ContainerBackend(Protocol):
    @property
    def gateway_id(self) -> str: ...  # the label that marks this gateway's containers

    @property
    def call_timeout(self) -> float: ...

    @property
    def files_read_only(self) -> bool: ...  # files put before start are read-only mounts (a cluster's secrets)

    @property
    def takes_stdin(self) -> bool: ...  # start() can hand a ContainerSpec.stdin to the container

    @property
    def ipc_folders(self) -> IpcFolders | None: ...  # kernels without a network: their sockets' folders

    # ---- lifecycle ----------------------------------------------------------------------------
    async def create(self, spec: ContainerSpec, timeout: float) -> str: ...  # files put in, not started

    async def start(self, container_id: str, timeout: float, image: str = "", stdin: bytes = b"") -> None: ...

    async def start_again(self, container_id: str) -> None: ...  # one that ended, same address if it can

    async def signal(self, container_id: str, signum: int) -> None: ...  # an ended one: nothing to do

    async def discard(self, container_id: str) -> None: ...  # after a failed launch; never raises

    async def remove(self, container_id: str) -> None: ...  # whatever its state; a missing one is removed

    # ---- specialising a running container (a pooled kernel at hand-out) -------------------------
    def can_attach_mounts(self) -> str: ...  # '' when attach_mounts works here, else why not

    async def update_limits(self, container_id: str, *, memory_bytes: int, cpus: float, pids: int) -> None: ...

    async def attach_mounts(self, container_id: str, mounts: list[BindMount]) -> None: ...

    async def prepare_attach(self) -> None: ...  # ready attach_mounts ahead of the first hand-out

    # ---- the engine itself ---------------------------------------------------------------------
    async def ensure_network(self) -> list[str]: ...  # make the containers' network; warnings about it

    async def list_ours(self) -> list[Owned]: ...  # this gateway's containers (adoption, reconciliation)

    async def nodes(self) -> list[Node]: ...  # where containers can run (one for a single engine)

    def node_of(self, container_id: str) -> str: ...  # the node it runs on, as last known ('' unknown)

    # ---- reading ------------------------------------------------------------------------------
    async def address(self, container_id: str, required: bool = True) -> str: ...

    async def state(self, container_id: str) -> dict[str, Any] | None: ...  # Running, ExitCode, OOMKilled

    async def usage(self, container_id: str, host_cores: int = 1) -> Usage: ...  # with the cores in use now

    async def totals(self, container_id: str) -> Usage: ...  # memory and CPU time only (cheaper: no rate)

    async def disk_unmeasured(self) -> str: ...  # '' when disk_use can tell, else why not

    async def disk_use(self, container_id: str, stop_bytes: int, stop_files: int) -> tuple[int, int]: ...

    async def logs(self, container_id: str, tail: int) -> str: ...

    async def follow_logs(self, container_id: str, tail: int) -> Any: ...  # a streams.LogStream: its output as it comes

    async def labelled_images(self, label: str) -> list[tuple[list[str], dict[str, str], str]]: ...

    # ---- inside the container -----------------------------------------------------------------
    async def open_tty(self, container_id: str, argv: list[str], *, user: str, workdir: str,
                       env: dict[str, str]) -> Terminal: ...

    async def run_detached(self, container_id: str, argv: list[str], user: str) -> None: ...

    async def put_tree(self, container_id: str, directory: str, files: list[tuple[str, bytes]], uid: int,
                       gid: int) -> None: ...

    async def exec_capture(self, container_id: str, argv: list[str], *, user: str, workdir: str,
                           env: dict[str, str], max_output: int) -> tuple[int, bytes, bytes, int]: ...

    # ---- events (on the calling loop; nothing polls) ------------------------------------------
    def subscribe(self, container_id: str, callback: EventCallback) -> None: ...

    def unsubscribe(self, container_id: str, callback: EventCallback | None = None) -> None: ...

    def on_reconnect(self, callback: Callable[[], object], container_id: str | None = None) -> None: ...

