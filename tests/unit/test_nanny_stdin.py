"""kge-nanny's --stdin-to: the connection file the gateway writes to a kernel container's stdin as
it starts. The nanny runs here as a plain process (it needs nothing of a container for this)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

NANNY = Path(__file__).resolve().parents[2] / "docker" / "kernel" / "kge-nanny"
# The "kernel": reports what it has on stdin and exits 3, so that the nanny exits at once with it.
KERNEL = [sys.executable, "-c", "import sys; print(repr(sys.stdin.read())); sys.exit(3)"]


def nanny(dst: Path, stdin: bytes | None, keep_open: bool = False) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, str(NANNY), "--stdin-to", str(dst), "--", *KERNEL]
    if not keep_open:
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=30)
    r, w = os.pipe()  # a stdin nobody writes or closes: the nanny must not wait on it
    try:
        return subprocess.run(argv, stdin=r, capture_output=True, timeout=30)
    finally:
        os.close(r)
        os.close(w)


def test_the_file_comes_from_stdin_and_the_kernel_gets_none_of_it(tmp_path: Path) -> None:
    dst = tmp_path / "connection.json"
    done = nanny(dst, b'{"key": "k"}')
    assert done.returncode == 3, done.stderr
    assert dst.read_bytes() == b'{"key": "k"}'
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600
    assert done.stdout.strip() == b"''"  # the kernel's stdin is /dev/null
    assert not (tmp_path / "connection.json.tmp").exists()


def test_a_later_start_finds_the_file_and_reads_no_stdin(tmp_path: Path) -> None:
    dst = tmp_path / "connection.json"
    dst.write_bytes(b'{"key": "first"}')
    done = nanny(dst, None, keep_open=True)
    assert done.returncode == 3, done.stderr
    assert dst.read_bytes() == b'{"key": "first"}' and done.stdout.strip() == b"''"


def test_an_empty_stdin_is_an_error_and_no_kernel_starts(tmp_path: Path) -> None:
    dst = tmp_path / "connection.json"
    done = nanny(dst, b"")
    assert done.returncode != 0 and b"stdin closed empty" in done.stderr
    assert not dst.exists() and done.stdout == b""
