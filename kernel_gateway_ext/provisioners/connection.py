"""How a container kernel and the gateway find each other (a mixin of DockerProvisioner).

The kernel's own connection file holds the key and its side of the sockets; it reaches the
container on its stdin as it starts, or as a file put in before (a cluster's read-only secret),
never in env, labels or logs. The gateway connects to the container's address over TCP, or, for
a kernel without a network (egress off: containers/ipc.py), to its IPC sockets in a folder of its
own, bound into its container.
"""
from __future__ import annotations

import asyncio
import json
import re
from typing import Any, cast

from jupyter_client.connect import KernelConnectionInfo

from ..containers import ContainerBackend, current_backend
from ..containers.ipc import CONTAINER_DIR as CONTAINER_IPC_DIR, endpoints
from ..containers.spec import BindMount, FileToPut
from ..errors import ContainerFailed, KernelStartFailed

# Fixed ports inside the container: each container has its own network namespace, so every
# kernel can use the same ones, and nothing is published on the host.
CONTAINER_PORTS = {
    "shell_port": 50001,
    "iopub_port": 50002,
    "stdin_port": 50003,
    "control_port": 50004,
    "hb_port": 50005,
}
CONNECTION_DIR = "/run/kge"
CONNECTION_FILE = f"{CONNECTION_DIR}/connection.json"
SECRET_DIR = "/run/kge-in"  # where a backend whose files are read-only mounts the connection file

IPC_USER = re.compile(r"\d+(:\d+)?\Z")  # a folder can be made a numeric user's only


class KernelConnection:
    """The connection half of DockerProvisioner: what it declares here, the provisioner has."""

    parent: Any
    kernel_id: Any
    user: str
    ipc_dir: str  # a kernel without a network: its sockets' folder on the host ('' over TCP)
    container_id: str | None
    connection_info: KernelConnectionInfo

    @property
    def backend(self) -> ContainerBackend:
        return current_backend()

    def _signature_scheme(self) -> str:
        km = self.parent
        return str(getattr(getattr(km, "session", None), "signature_scheme", "hmac-sha256"))

    def _key(self) -> bytes:
        km = self.parent
        key = getattr(getattr(km, "session", None), "key", b"")
        return key if isinstance(key, bytes) else str(key).encode()

    @property
    def _transport(self) -> str:
        return "ipc" if self.ipc_dir else "tcp"

    def _info(self, ip: str) -> dict[str, Any]:
        """Connection info at `ip` (an address, or IPC sockets' path prefix), key included."""
        return {"ip": ip, "transport": self._transport, "key": self._key(), "signature_scheme": self._signature_scheme(),
                "kernel_name": str(getattr(self.parent, "kernel_name", "") or ""), **CONTAINER_PORTS}

    def _connection_json(self) -> bytes:
        """The kernel's connection file (the key is in it: only the kernel's user reads it)."""
        info = self._info(endpoints(CONTAINER_IPC_DIR) if self.ipc_dir else "0.0.0.0")
        return json.dumps({**info, "key": info["key"].decode()}).encode()

    def _connection_delivery(self) -> dict[str, Any]:
        """How the connection file reaches the container (matching _nanny_cmd's option): on its
        stdin where the backend can, else put in before it starts."""
        data = self._connection_json()
        if self.backend.files_read_only:
            return {"files": [FileToPut(SECRET_DIR, "connection.json", data, 0o400)]}
        if self.backend.takes_stdin:
            return {"stdin": data}
        return {"files": [FileToPut(CONNECTION_DIR, "connection.json", data, 0o400)]}

    def _ipc_mount(self) -> list[BindMount]:
        return [BindMount(self.ipc_dir, CONTAINER_IPC_DIR)] if self.ipc_dir else []

    async def _make_ipc_dir(self) -> None:
        """Where the backend has kernels go without a network, this one's sockets' folder."""
        folders = self.backend.ipc_folders
        self.ipc_dir = ""
        if folders is not None and IPC_USER.match(self.user):
            self.ipc_dir = await asyncio.to_thread(folders.make, str(self.kernel_id), self.user)

    async def _read_address(self) -> None:
        """Where the gateway reaches the running kernel: its IPC sockets' folder, or its address."""
        assert self.container_id is not None
        if self.ipc_dir:
            self._set_address(endpoints(self.ipc_dir))
            return
        try:
            self._set_address(await self.backend.address(self.container_id))
        except ContainerFailed as e:
            raise KernelStartFailed(e.message) from e

    def _set_address(self, ip: str) -> None:
        self.connection_info = cast(KernelConnectionInfo, self._info(ip))

    async def _remove_ipc_dir(self) -> None:
        folders = self.backend.ipc_folders
        if self.ipc_dir and folders is not None:
            await asyncio.to_thread(folders.remove, str(self.kernel_id))
