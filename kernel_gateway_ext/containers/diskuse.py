"""What a container has written to this host's disk: its writable layer (overlay2's upper
directory), its volumes and its IPC socket folder. A user's mounted folders are not counted: they
are the folders' own, with their own quotas.

Docker bounds a writable layer only on overlay2 over xfs with project quotas (`--storage-opt
size`), which most hosts (and this machine's kernel, built without quota support) cannot give; so
the gateway reads the files instead, where it can: on the engine's host, as root or with a
capability that reads any folder (CAP_DAC_READ_SEARCH, CAP_DAC_OVERRIDE). The walk
is bounded (tree_usage stops once past the limit), by file descriptor, without following a link.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

from ..fsusage import open_tree, tree_usage
from .engine import DockerEngine


def written_paths(info: dict[str, Any], ipc_dir: str) -> list[str]:
    """The host folders a container's own writes land in, from its inspect."""
    paths = []
    driver = info.get("GraphDriver") or {}
    if driver.get("Name") == "overlay2" and (driver.get("Data") or {}).get("UpperDir"):
        paths.append(str(driver["Data"]["UpperDir"]))
    for mount in info.get("Mounts") or []:
        source = str(mount.get("Source") or "")
        if mount.get("Type") == "volume" and source:
            paths.append(source)
        elif mount.get("Type") == "bind" and ipc_dir and source.startswith(ipc_dir.rstrip("/") + "/"):
            paths.append(source)
    return paths


def measure(paths: list[str], stop_bytes: int, stop_files: int) -> tuple[int, int]:
    """(bytes on disk, entries) under `paths`, stopping once past either bound (0: none). Blocking."""
    total, count = 0, 0
    for path in paths:
        try:
            fd = open_tree(path)
        except FileNotFoundError:  # a volume removed, a layer gone with its container
            continue
        try:
            # What is left of each bound (at least 1: 0 would mean none).
            used, entries = tree_usage(fd, max(1, stop_bytes - total) if stop_bytes else 0,
                                       max(1, stop_files - count) if stop_files else 0, allocated=True)
        finally:
            os.close(fd)
        total, count = total + used, count + entries
        if (stop_bytes and total > stop_bytes) or (stop_files and count > stop_files):
            break
    return total, count


class DiskUse:
    """Measures the containers of one engine (their paths are read once, from an inspect)."""

    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine
        self._paths: dict[str, list[str]] = {}

    async def why_not(self) -> str:
        """'' when this gateway can read what the engine's containers write, else why not."""
        if not self.engine.is_local:
            return "the engine is not on this machine"
        info = await self.engine.api("info")
        if info.get("Driver") != "overlay2":
            return f"the engine's storage driver is {info.get('Driver')!r}, not overlay2"
        layers = os.path.join(str(info.get("DockerRootDir") or "/var/lib/docker"), "overlay2")
        try:  # opened, not access()ed: a capability (CAP_DAC_READ_SEARCH) counts for open only
            os.close(open_tree(layers))
        except OSError as e:
            return (f"this gateway cannot read the engine's layers ({layers}: {e.strerror}); it needs root, "
                    "CAP_DAC_READ_SEARCH or CAP_DAC_OVERRIDE on the engine's host")
        return ""

    async def measure(self, container_id: str, stop_bytes: int, stop_files: int) -> tuple[int, int]:
        paths = self._paths.get(container_id)
        if paths is None:
            paths = written_paths(await self.engine.api("inspect_container", container_id), self.engine.ipc_dir)
            self._paths[container_id] = paths
        return await asyncio.get_running_loop().run_in_executor(None, measure, paths, stop_bytes, stop_files)

    def forget(self, container_id: str) -> None:
        self._paths.pop(container_id, None)
