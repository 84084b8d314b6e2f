"""What callers do inside a running kernel's container, beside jupyter_client's lifecycle (which is
the provisioner's): a terminal, quiet commands, uploaded files, batch commands, usage and logs."""
from __future__ import annotations

import math
from typing import Protocol

from ..containers.backend import ContainerBackend, Terminal
from ..errors import KernelStartFailed

BATCH_MAX_OUTPUT = 8 * 2**20  # bytes of a batch command's output kept for its caller


class ContainerHolder(Protocol):
    """What this needs of the provisioner that holds the container."""

    container_id: str | None
    user: str
    work_dir: str

    @property
    def backend(self) -> ContainerBackend: ...

    @property
    def exited(self) -> bool: ...

    def container_env(self) -> dict[str, str]: ...


class KernelContainer:
    def __init__(self, holder: ContainerHolder) -> None:
        self.holder = holder

    async def logs(self, tail: int = 200) -> str:
        """The container's recent output (the kernel's stdout/stderr)."""
        if self.holder.container_id is None:
            return ""
        return await self.holder.backend.logs(self.holder.container_id, tail)

    # ---- what REST callers do in the container ------------------------------------------------
    async def open_terminal(self, env: dict[str, str]) -> Terminal:
        """A login shell with a TTY in the kernel's container, as the kernel's user, with its env."""
        assert self.holder.container_id is not None
        return await self.holder.backend.open_tty(
            self.holder.container_id, ["/bin/bash", "-l"], user=self.holder.user, workdir=self.holder.work_dir,
            env={**self.holder.container_env(), **env})

    async def run_quietly(self, argv: list[str]) -> None:
        """A short command in the kernel's container as its user (output not kept)."""
        if self.holder.container_id is not None:
            await self.holder.backend.run_detached(self.holder.container_id, argv, self.holder.user)

    async def put_files(self, files: list[tuple[str, bytes]]) -> None:
        """Write files (relative paths, already checked) into the work dir as the kernel user."""
        if self.holder.container_id is None:
            raise KernelStartFailed("kernel has no container")
        uid, _, gid = self.holder.user.partition(":")
        await self.holder.backend.put_tree(self.holder.container_id, self.holder.work_dir, files,
                                                     int(uid or 0), int(gid or uid or 0))

    async def run_command(self, command: str, timeout: float, max_output: int = BATCH_MAX_OUTPUT) -> tuple[int, str, str]:
        """Run a shell command in the container as the kernel user: (exit code, stdout, stderr).

        The command is killed inside the container at `timeout` (coreutils `timeout`: the exec,
        and the thread reading it, end with it) and at most `max_output` bytes of its output are
        kept (the rest is read and counted, so the command never blocks on a full pipe)."""
        if self.holder.container_id is None:
            raise KernelStartFailed("kernel has no container")
        cid = self.holder.container_id
        seconds = max(1, math.ceil(timeout))
        code, out, err, dropped = await self.holder.backend.exec_capture(
            cid, ["timeout", "--kill-after=2", str(seconds), "/bin/sh", "-c", command],
            user=self.holder.user, workdir=self.holder.work_dir, env=self.holder.container_env(), max_output=max_output)
        tail = ""
        if dropped:
            tail += f"[{dropped} bytes of output dropped: more than {max_output} bytes]\n"
        if code in (124, 137):
            tail += f"command timed out after {timeout:g} s\n"
        return code, out.decode(errors="replace"), err.decode(errors="replace") + tail

    async def stats(self) -> dict[str, int]:
        """Memory in use (bytes, page cache excluded), its peak, and CPU time used (ns)."""
        if self.holder.container_id is None or self.holder.exited:
            return {"memory": 0, "memory_max": 0, "cpu_ns": 0}
        use = await self.holder.backend.totals(self.holder.container_id)
        return {"memory": use.memory, "memory_max": use.memory_max, "cpu_ns": use.cpu_ns}

