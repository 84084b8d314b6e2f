"""Virtual folders on the host, their records in the store, and mount specs for containers.

A folder lives at ROOT/<id> (ROOT may be a shared filesystem). Its files belong to the kernel
user (uid 1000 by default) so a kernel can write them; the gateway reads and deletes them as the
folder API asks. Nothing a caller names may escape its folder or /home/work.
"""
from __future__ import annotations

import builtins

import asyncio
import contextlib
import errno
import os
import posixpath
import re
import shutil
import stat
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from traitlets import Instance, Int, Unicode, default

from ..containers.spec import BindMount
from ..config import EnvConfigurable, env
from ..errors import BadRequest, Conflict, Forbidden, NotFound
from ..fsusage import tree_usage
from ..store import Store

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
WORK_DIR = "/home/work"


def safe_relative_path(name: str) -> str:
    """A normalized relative POSIX path that stays inside its base, or BadRequest."""
    if not name or "\x00" in name or name.startswith("/") or "\\" in name:
        raise BadRequest(f"invalid path {name!r}: must be relative")
    if ".." in name.split("/"):
        raise BadRequest(f"invalid path {name!r}: '..' is not allowed")
    norm = posixpath.normpath(name)
    if norm in (".", ""):
        raise BadRequest(f"invalid path {name!r}: names no file")
    return norm


USAGE_TTL = 30.0  # seconds a folder's counted usage is trusted (plus what was uploaded since)


def _open_root(base: Path) -> int:
    return os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _open_no_follow(name: str, flags: int, dir_fd: int, shown: str) -> int:
    """Open `name` in the directory `dir_fd` unless it is a symlink (then BadRequest)."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o660, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
            raise BadRequest(f"invalid path {shown!r}: a link or not a directory on the way") from e
        raise


class FolderManager(EnvConfigurable):
    store = Instance(Store)
    root = env(Unicode(help="Where folders live on the host (default: STATE_DIR/folders)."), "KGE_FOLDERS_ROOT")
    file_uid = env(Int(1000, help="Owner uid of folder files (the kernel user)."), "KGE_FOLDER_UID")
    file_gid = env(Int(1000, help="Owner gid of folder files."), "KGE_FOLDER_GID")
    max_mounts = Int(5, help="Most folders mounted into one kernel.").tag(config=True)
    max_upload_bytes = env(Int(64 * 2**20, help="Largest file accepted by a folder upload."), "KGE_FOLDER_MAX_UPLOAD")
    max_folders = env(Int(32, help="Folders one owner may have (0: no limit)."), "KGE_MAX_FOLDERS_PER_OWNER")
    quota_bytes = env(
        Int(20 * 2**30, help="Bytes a folder may hold after an upload (0: no limit). Uploads are checked; what a "
                             "kernel writes into a mounted folder is bounded only by the filesystem (use project "
                             "quotas on the folder root for that)."),
        "KGE_FOLDER_QUOTA_BYTES",
    )
    quota_files = env(Int(1_000_000, help="Files and directories a folder may hold after an upload (0: no limit)."),
                      "KGE_FOLDER_QUOTA_FILES")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._upload_locks: dict[str, asyncio.Lock] = {}  # folder id -> its uploads' turn (dropped with it)
        self._usage: dict[str, tuple[float, int, int]] = {}  # folder id -> (counted at, bytes, entries)

    @default("root")
    def _root_default(self) -> str:
        return os.path.join(self.store.state_dir, "folders")

    # ---- records --------------------------------------------------------------------------------
    async def _find(self, owner: str | None, name: str) -> dict[str, Any]:
        if not NAME_RE.match(name or ""):
            raise NotFound(f"no folder named {name!r}")
        query = "SELECT * FROM folders WHERE name = ?" + ("" if owner is None else " AND owner = ?")
        args = (name,) if owner is None else (name, owner)
        row = await self.store.fetchrow(query, *args)
        if row is None:
            raise NotFound(f"no folder named {name!r}")
        return row

    def path_of(self, folder_id: str) -> Path:
        return Path(self.root) / folder_id

    async def create(self, owner: str, name: str) -> dict[str, Any]:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise BadRequest("folder names are 1-64 letters, digits and _.- (not starting with . - _)")
        folder_id = uuid.uuid4().hex
        path = self.path_of(folder_id)

        # One owner's count and insert under one lock (replicas share the store).
        async with self.store.transaction(lock=f"folders:{owner}") as tx:
            if await tx.fetch("SELECT 1 FROM folders WHERE owner = ? AND name = ?", owner, name):
                raise Conflict(f"a folder named {name!r} already exists", status=400)
            count = (await tx.fetch("SELECT COUNT(*) AS n FROM folders WHERE owner = ?", owner))[0]["n"]
            if self.max_folders and count >= self.max_folders:
                raise Forbidden(f"{owner} already has the maximum of {self.max_folders} folders; delete one first")

            def mkdir() -> None:
                path.mkdir(parents=True, mode=0o770)
                os.chown(path, self.file_uid, self.file_gid)
            await asyncio.to_thread(mkdir)
            try:
                await tx.execute("INSERT INTO folders (id, owner, name, created) VALUES (?, ?, ?, ?)",
                                 folder_id, owner, name, time.time())
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
                raise
        return {"id": folder_id, "name": name}

    async def list(self, owner: str | None) -> list[dict[str, Any]]:
        query = "SELECT * FROM folders" + ("" if owner is None else " WHERE owner = ?") + " ORDER BY created"
        rows = await self.store.fetch(query, *(() if owner is None else (owner,)))
        # is_owner and permission: what the 1.4 CLI's `vfolder list` shows besides name and id.
        return [{"name": r["name"], "id": r["id"], "is_owner": True, "permission": "rw",
                 **({"owner": r["owner"]} if owner is None else {})} for r in rows]

    async def info(self, owner: str | None, name: str) -> dict[str, Any]:
        row = await self._find(owner, name)
        path = self.path_of(row["id"])
        count = await asyncio.to_thread(lambda: sum(len(files) for _, _, files in os.walk(path)))
        created = datetime.fromtimestamp(row["created"], timezone.utc).isoformat()
        return {"name": row["name"], "id": row["id"], "numFiles": count, "created": created,
                "is_owner": True, "permission": "rw"}

    async def delete(self, owner: str | None, name: str) -> None:
        row = await self._find(owner, name)
        path = self.path_of(row["id"])
        doomed = path.with_name(f".deleting-{row['id']}")
        await self.store.execute("DELETE FROM folders WHERE id = ?", row["id"])
        self._upload_locks.pop(row["id"], None)
        self._usage.pop(row["id"], None)

        def remove() -> None:
            # Renamed first (the folder is gone at once), then removed off the database thread: a
            # folder of a million files must not hold every login and request that needs the store.
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

        await asyncio.to_thread(remove)

    async def upload(self, owner: str | None, name: str, files: builtins.list[tuple[str, bytes]]) -> int:
        row = await self._find(owner, name)
        base = self.path_of(row["id"])
        checked = []
        for filename, body in files:
            rel = safe_relative_path(filename)
            if len(body) > self.max_upload_bytes:
                raise BadRequest(f"{filename!r} is larger than {self.max_upload_bytes} bytes")
            checked.append((rel, body))

        def write() -> None:
            root = _open_root(base)
            try:
                self._check_quota(root, row["id"], name, checked)
                for rel, body in checked:
                    *dirs, leaf = rel.split("/")
                    dfd = self._walk(root, dirs, create=True)
                    try:
                        fd = _open_no_follow(leaf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, dfd, rel)
                        try:
                            os.fchown(fd, self.file_uid, self.file_gid)
                            view = memoryview(body)
                            while view:
                                view = view[os.write(fd, view):]
                        finally:
                            os.close(fd)
                    finally:
                        os.close(dfd)
            finally:
                os.close(root)

        async with self._upload_locks.setdefault(row["id"], asyncio.Lock()):
            await asyncio.to_thread(write)  # one upload at a time per folder: the quota check holds for it
        return len(checked)

    def _check_quota(self, root: int, folder_id: str, name: str, incoming: builtins.list[tuple[str, bytes]]) -> None:
        """Refuse an upload that would take the folder past its byte or file quota. The folder is
        counted at most every USAGE_TTL seconds (a walk costs its size; kernels may write to it
        meanwhile), uploads in between add to the count."""
        if not self.quota_bytes and not self.quota_files:
            return
        now = time.monotonic()
        counted = self._usage.get(folder_id)
        if counted is None or now - counted[0] > USAGE_TTL:
            counted = (now, *tree_usage(root, self.quota_bytes, self.quota_files))
        _, used_bytes, used_files = counted
        new_bytes = used_bytes + sum(len(body) for _, body in incoming)
        # Each directory an upload names may be new: counted as such until the next walk.
        dirs = {"/".join(rel.split("/")[:i]) for rel, _ in incoming for i in range(1, rel.count("/") + 1)}
        new_files = used_files + len(incoming) + len(dirs)
        if self.quota_bytes and new_bytes > self.quota_bytes:
            raise Forbidden(f"folder {name!r} would hold {new_bytes} bytes, over its quota of {self.quota_bytes}")
        if self.quota_files and new_files > self.quota_files:
            raise Forbidden(f"folder {name!r} would hold {new_files} files, over its quota of {self.quota_files}")
        self._usage[folder_id] = (counted[0], new_bytes, new_files)

    async def open_files(self, owner: str | None, name: str, paths: builtins.list[str]) -> builtins.list[tuple[str, int, int]]:
        """[(path, fd, size)] of regular files of a folder, opened by fd without following a link
        (the kernel may swap them meanwhile); the caller closes the fds."""
        row = await self._find(owner, name)
        base = self.path_of(row["id"])
        rels = [safe_relative_path(p) for p in paths]

        def open_all() -> list[tuple[str, int, int]]:
            opened: list[tuple[str, int, int]] = []
            root = _open_root(base)
            try:
                for rel in rels:
                    *dirs, leaf = rel.split("/")
                    try:
                        dfd = self._walk(root, dirs, create=False, shown=rel)
                    except NotADirectoryError:
                        raise NotFound(f"no file {rel!r} in folder {name!r}") from None
                    try:
                        fd = _open_no_follow(leaf, os.O_RDONLY, dfd, rel)
                    except FileNotFoundError:
                        raise NotFound(f"no file {rel!r} in folder {name!r}") from None
                    finally:
                        os.close(dfd)
                    st = os.fstat(fd)
                    opened.append((rel, fd, st.st_size))
                    if not stat.S_ISREG(st.st_mode):
                        raise BadRequest(f"{rel!r} is not a file")
            except BaseException:
                for _, fd, _ in opened:
                    os.close(fd)
                raise
            finally:
                os.close(root)
            return opened

        return await asyncio.to_thread(open_all)

    async def files(self, owner: str | None, name: str, path: str = ".") -> builtins.list[dict[str, Any]]:
        row = await self._find(owner, name)
        base = self.path_of(row["id"])
        rel = "." if path in ("", ".") else safe_relative_path(path)

        def scan() -> list[dict[str, Any]]:
            root = _open_root(base)
            try:
                dfd = self._walk(root, [] if rel == "." else rel.split("/"), create=False, shown=path)
            except BadRequest as e:  # a file or a link where a directory was named
                raise NotADirectoryError(path) from e
            finally:
                os.close(root)
            out = []
            try:
                with os.scandir(dfd) as entries:  # never follows a link: st and type are the link's own
                    for entry in sorted(entries, key=lambda e: e.name):
                        st = entry.stat(follow_symlinks=False)
                        out.append({"filename": entry.name, "size": st.st_size, "mode": oct(st.st_mode),
                                    "mtime": datetime.fromtimestamp(st.st_mtime, timezone.utc).isoformat(),
                                    "type": "DIRECTORY" if entry.is_dir(follow_symlinks=False) else "FILE"})
            finally:
                os.close(dfd)
            return out

        try:
            return await asyncio.to_thread(scan)
        except NotADirectoryError as e:
            raise NotFound(f"no directory {path!r} in folder {name!r}") from e

    def _walk(self, root: int, dirs: builtins.list[str], *, create: bool, shown: str = "") -> int:
        """An fd of ROOT/dirs, opened one component at a time relative to the last one, never
        following a link: a kernel that swaps a directory for a symlink meanwhile cannot send the
        gateway (root) outside the folder. With `create`, missing directories are made, owned by
        the kernel user. The caller closes the fd."""
        fd = os.dup(root)
        try:
            for part in dirs:
                made = False
                for _attempt in range(5):  # the kernel may create and remove it meanwhile
                    try:
                        nfd = _open_no_follow(part, os.O_RDONLY | os.O_DIRECTORY, fd, shown or part)
                        if made:
                            os.fchown(nfd, self.file_uid, self.file_gid)  # by fd: whatever the name is now
                        break
                    except FileNotFoundError:
                        if not create:
                            raise NotADirectoryError(part) from None
                    with contextlib.suppress(FileExistsError):  # made meanwhile: opened next round
                        os.mkdir(part, 0o770, dir_fd=fd)
                        made = True
                else:
                    raise Conflict(f"{shown or part!r} kept changing while it was written; try again")
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ---- mounts ---------------------------------------------------------------------------------
    async def mounts(self, owner: str, specs: Any) -> builtins.list[BindMount]:
        """`["data", "pkgs:.local/lib"]` -> bind mounts at /home/work/NAME or /home/work/ALIAS."""
        if specs is None:
            return []
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            raise BadRequest("'mounts' must be a list of folder names")
        if len(specs) > self.max_mounts:
            raise BadRequest(f"at most {self.max_mounts} folders can be mounted")
        out: list[BindMount] = []
        targets: set[str] = set()
        for spec in specs:
            name, sep, alias = spec.partition(":")
            if sep and not alias:
                raise BadRequest(f"invalid mount {spec!r}: empty alias")
            rel = safe_relative_path(alias if sep else name)
            target = posixpath.join(WORK_DIR, rel)
            if target in targets or any(t.startswith(target + "/") or target.startswith(t + "/") for t in targets):
                raise BadRequest(f"mount {spec!r} overlaps another mount")
            targets.add(target)
            row = await self._find(owner, name)
            out.append(BindMount(source=str(self.path_of(row["id"])), target=target))
        return out
