"""Bind host folders into a running container's mount namespace (a pooled kernel specialised at
hand-out gets the caller's folders without being made again).

Run as its own process, never imported by the gateway: entering another mount namespace (setns) is
refused to a process with more than one thread. `python3 -I -S mountns.py --serve` is the helper the
gateway keeps (containers/mounter.py): it forks a child per request.
Standard library only.

How (Linux >= 5.12, root with CAP_SYS_ADMIN, as the engine itself needs): each source is cloned as a
detached mount tree in the host's namespace (open_tree), made read-only where asked and private, as
Docker's binds are (mount_setattr); then the helper enters the container's mount namespace, makes
the mount point as the engine's runtime would (missing folders 0755, root's, no symlink followed) and
attaches each tree there (move_mount). A cold container's `docker run --mount type=bind` ends the
same: the same mount points, flags and files.

A request is a line {"id": N, "pid": PID, "mounts": [{"source": "/host/path", "target": "/home/work/x",
"read_only": false}, ...]}; the answer a line {"id": N, "ok": true|false, "error": "..."}. On an
error the caller discards the container: a half-specialised kernel is never handed out.
"""
import ctypes
import errno
import json
import os
import stat
import sys

SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # the same on every architecture
OPEN_TREE_CLONE = 1
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x1
MS_PRIVATE = 1 << 18
CLONE_NEWNS = 0x00020000


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def check(ret, what):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))
    return ret


def clone_tree(source, read_only):
    fd = check(libc.syscall(SYS_OPEN_TREE, AT_FDCWD, source.encode(),
                            OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE), "open_tree " + source)
    attr = MountAttr(MOUNT_ATTR_RDONLY if read_only else 0, 0, MS_PRIVATE, 0)
    check(libc.syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH | AT_RECURSIVE, ctypes.byref(attr),
                       ctypes.sizeof(attr)), "mount_setattr " + source)
    return fd


def make_mount_point(target):
    """Walk from / to `target`, one component at a time without following a symlink; make what is
    missing as the engine's runtime does (0755, root's). Returns an O_PATH fd of the mount point."""
    parts = [p for p in target.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise OSError(errno.EINVAL, "not an absolute, normal path: %r" % target)
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        for part in parts:
            try:
                nfd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                nfd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:  # ELOOP/ENOTDIR: a symlink or a file where a folder must be
                raise OSError(e.errno, "%s: %s is not a folder" % (target, part)) from e
            os.close(fd)
            fd = nfd
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.ENOTDIR, target)
        return fd
    except BaseException:
        os.close(fd)
        raise


def attach(pid, mounts):
    """In this (single-threaded) process: attach `mounts` inside the mount namespace of `pid`."""
    os.umask(0o022)
    trees = [(clone_tree(m["source"], bool(m.get("read_only"))), m["target"]) for m in mounts]
    ns = os.open("/proc/%d/ns/mnt" % pid, os.O_RDONLY | os.O_CLOEXEC)
    root = os.open("/proc/%d/root" % pid, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    check(libc.setns(ns, CLONE_NEWNS), "setns")
    os.fchdir(root)
    os.chroot(".")  # the container's root, whatever the namespace's first mount is
    for tree, target in trees:
        point = make_mount_point(target)
        try:
            check(libc.syscall(SYS_MOVE_MOUNT, tree, b"", point, b"", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
                  "move_mount " + target)
        finally:
            os.close(point)


def serve():
    """One JSON request a line on stdin, one answer a line on stdout. Each request is done in a
    forked child (single-threaded, so it may enter the namespace; this process never does), so a
    hand-out costs a fork, not an interpreter start."""
    for line in sys.stdin:
        answer = {"ok": False, "error": "bad request"}
        try:
            req = json.loads(line)
            answer["id"] = req.get("id")
            rfd, wfd = os.pipe()
            child = os.fork()
            if child == 0:
                os.close(rfd)
                code = 0
                try:
                    attach(int(req["pid"]), req["mounts"])
                except BaseException as e:  # noqa: BLE001 - reported to the parent, then exit
                    os.write(wfd, str(e).encode()[:1000])
                    code = 1
                os._exit(code)
            os.close(wfd)
            with os.fdopen(rfd, "rb") as r:
                error = r.read(1001).decode(errors="replace")
            _, status = os.waitpid(child, 0)
            ok = os.waitstatus_to_exitcode(status) == 0
            answer.update(ok=ok, error="" if ok else (error or "the mount helper failed"))
        except (ValueError, KeyError, TypeError, OSError) as e:
            answer["error"] = str(e)[:1000]
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def main(argv):
    if argv[1:] != ["--serve"]:
        sys.stderr.write("usage: mountns.py --serve\n")
        return 2
    serve()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (OSError, ValueError, KeyError, IndexError) as e:
        sys.stderr.write("mountns: %s\n" % e)
        sys.exit(1)
