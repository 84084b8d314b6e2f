"""Kernels without a network: ZMQ over IPC sockets in a folder of their own.

With no egress (DockerEngine.network_egress off) a kernel has nothing to reach on a network, so it
gets none (Docker's network_mode none: no interface, no bridge port, no embedded resolver). That is
~75 ms less engine work per start and per removal, and nothing at all a hostile kernel can connect
to. Its five sockets are files in a folder made for it alone on the host and bound into its
container; the gateway connects to the files.

The folder is the kernel's uid's (it binds there) inside a parent only the gateway's user may
enter, so only the kernel and the gateway reach the sockets (a gateway that is not root needs
CAP_CHOWN, CAP_DAC_OVERRIDE and CAP_FOWNER: the systemd unit gives them); it is removed with the
container, and a gateway's start prunes what a crash left. Unix socket paths are short (108
bytes), hence /run and the kernel id only.
Blocking calls (mkdir, chown, rmtree): run them off the event loop.
"""
from __future__ import annotations

import os
import shutil
import time

from ..privileges import missing

CONTAINER_DIR = "/run/kge-ipc"  # where the folder is in the container
SOCKET_PREFIX = "k"  # sockets are <folder>/k-<port>, as jupyter_client names IPC endpoints
MAX_PATH = 100  # bytes: sun_path holds 108 with its NUL; "-50001" and some margin
YOUNG = 60.0  # s: a folder this new may be a start under way in another replica: never pruned


class IpcFolders:
    """The per-kernel socket folders under `base` (one gateway id's)."""

    def __init__(self, base: str) -> None:
        self.base = base

    @staticmethod
    def usable(base: str) -> str:
        """'' when kernels' sockets can live under `base`, else why not."""
        lacking = missing("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER")
        if lacking:  # root has them all; the systemd unit's user is given them
            return (f"the gateway lacks {', '.join(lacking)} (it makes each folder its kernel's user's, connects to "
                    "the kernel's sockets and removes them)")
        longest = os.path.join(base, "0" * 36, f"{SOCKET_PREFIX}-50001")
        if len(longest.encode()) > MAX_PATH:
            return f"{base} is too long for a socket path ({MAX_PATH} bytes at most)"
        return ""

    def path(self, kernel_id: str) -> str:
        return os.path.join(self.base, kernel_id)

    def make(self, kernel_id: str, user: str) -> str:
        """The kernel's empty folder, its `user`'s ('uid:gid'), 0700; the parents the gateway's, 0700."""
        folder = self.path(kernel_id)
        shutil.rmtree(folder, ignore_errors=True)  # a crashed start's, if any
        for attempt in range(2):
            os.makedirs(self.base, mode=0o700, exist_ok=True)
            os.chmod(self.base, 0o700)
            try:
                os.mkdir(folder, 0o700)
                break
            except FileNotFoundError:  # another replica's close() took the empty base just now
                if attempt:
                    raise
        uid, _, gid = user.partition(":")
        os.chown(folder, int(uid), int(gid or uid))
        return folder

    def remove(self, kernel_id: str) -> None:
        shutil.rmtree(self.path(kernel_id), ignore_errors=True)

    def close(self) -> None:
        """This gateway's folder goes once it is empty (its kernels' went with them)."""
        try:
            os.rmdir(self.base)
        except OSError:  # kernels kept for adoption, another replica's, or already gone
            pass

    def prune(self, keep: set[str]) -> list[str]:
        """Remove the folders of kernels not in `keep` (their containers are gone); those removed."""
        try:
            names = os.listdir(self.base)
        except FileNotFoundError:
            return []
        gone = []
        for name in names:
            folder = self.path(name)
            try:
                young = time.time() - os.stat(folder).st_mtime < YOUNG
            except FileNotFoundError:
                continue
            if name not in keep and not young:
                shutil.rmtree(folder, ignore_errors=True)
                gone.append(name)
        return gone


def endpoints(folder: str) -> str:
    """The `ip` of an IPC connection: sockets are `<ip>-<port>`."""
    return os.path.join(folder, SOCKET_PREFIX)
