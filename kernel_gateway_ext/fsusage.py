"""How much lies under a directory, walked by file descriptor without following a link, with a
bound on the walk: folder quotas (folders/) and the containers' disk guard (diskguard.py) ask it
about trees that a hostile kernel writes to. Blocking: run it off the event loop."""
from __future__ import annotations

import contextlib
import os
from typing import Any

MAX_DEPTH = 128  # deeper directories are counted, not entered (each level holds an fd)


def tree_usage(root: int, stop_bytes: int, stop_files: int, allocated: bool = False) -> tuple[int, int]:
    """(bytes, entries) under an open directory, by fd, never following a link; stops early once
    past `stop_bytes` or `stop_files` (0: no stop): the caller only needs to know it is over.
    Bytes are the files' sizes, or with `allocated` the disk blocks they hold (a sparse file of
    a terabyte holds almost none)."""
    total, count = 0, 0
    stack: list[tuple[int, Any]] = [(os.dup(root), None)]  # (fd, its scandir iterator once opened)
    try:
        while stack:
            fd, it = stack[-1]
            if it is None:
                it = os.scandir(fd)
                stack[-1] = (fd, it)
            entry = next(it, None)
            if entry is None:
                it.close()
                os.close(fd)
                stack.pop()
                continue
            count += 1
            if entry.is_dir(follow_symlinks=False):
                if len(stack) < MAX_DEPTH:
                    with contextlib.suppress(OSError):  # gone or swapped meanwhile
                        stack.append((os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                              dir_fd=fd), None))
            else:
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    total += st.st_blocks * 512 if allocated else st.st_size
            if (stop_bytes and total > stop_bytes) or (stop_files and count > stop_files):
                break
    finally:
        for fd, it in stack:
            if it is not None:
                it.close()
            os.close(fd)
    return total, count


def open_tree(path: str) -> int:
    """An fd on directory `path` (not a symlink), for tree_usage."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
