"""What a container is to be, for kernels and Skaha jobs alike: one description, turned into the
engine's create arguments in one place (containers/runtime.py), so the hardening is written once."""
from __future__ import annotations

import io
import tarfile
import time
from dataclasses import dataclass, field


# Labels every container of ours carries, so operators can find them with
# `docker ps --filter label=org.kge.managed=true` and a restarted gateway can recognise them.
LABEL_MANAGED = "org.kge.managed"
LABEL_GATEWAY = "org.kge.gateway"
LABEL_REPLICA = "org.kge.replica"  # the replica that made it (replicas share one gateway id)
LABEL_KIND = "org.kge.kind"
LABEL_KERNEL_ID = "org.kge.kernel.id"
LABEL_OWNER = "org.kge.owner"
LABEL_KERNELSPEC = "org.kge.kernelspec"
LABEL_CONNECTION = "org.kge.connection"  # ports and transport; never the key


@dataclass(frozen=True)
class BindMount:
    """A host folder (a user's virtual folder) at `target` in the container."""

    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class FileToPut:
    """A file put into the container before it starts, owned by its user (secrets: mode 0400,
    never in the environment or `docker inspect`)."""

    directory: str
    name: str
    data: bytes
    mode: int = 0o400


@dataclass
class ContainerSpec:
    image: str
    command: list[str] | None
    kind: str  # "kernel" or "session": the org.kge.kind label
    labels: dict[str, str] = field(default_factory=dict)  # besides managed, gateway and kind
    env: dict[str, str] = field(default_factory=dict)
    user: str = "1000:1000"
    working_dir: str = "/home/work"
    run_dir: str = "/run/kge"  # the gateway's files for the container (connection file, tokens)
    hostname: str | None = None
    memory_bytes: int = 0  # also the swap limit: no swap beyond it
    cpus: float = 1.0
    pids: int = 512
    gpus: int = 0
    mounts: list[BindMount] = field(default_factory=list)
    network: str | None = None  # None: the engine's isolated network
    init: bool = True
    files: list[FileToPut] = field(default_factory=list)
    # Written once to the container's stdin as it starts, then closed: a file its first process
    # writes itself (kge-nanny --stdin-to), where the backend `takes_stdin`. Unlike `files` it needs
    # no copy into the stopped container, which cost the engine a mount of its filesystem and a
    # round trip (~40 ms of every cold start).
    stdin: bytes = b""

    @property
    def uid_gid(self) -> tuple[int, int]:
        uid, _, gid = self.user.partition(":")
        return int(uid or 0), int(gid or uid or 0)

    def tars(self) -> dict[str, bytes]:
        """The files to put, as one tar per directory, owned by the container's user."""
        uid, gid = self.uid_gid
        by_dir: dict[str, list[FileToPut]] = {}
        for f in self.files:
            by_dir.setdefault(f.directory, []).append(f)
        out = {}
        for directory, files in by_dir.items():
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for f in files:
                    ti = tarfile.TarInfo(f.name)
                    ti.size, ti.mode, ti.mtime, ti.uid, ti.gid = len(f.data), f.mode, int(time.time()), uid, gid
                    tar.addfile(ti, io.BytesIO(f.data))
            out[directory] = buf.getvalue()
        return out
