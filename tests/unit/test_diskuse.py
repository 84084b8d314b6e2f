"""What counts as a container's own files on the host (containers/diskuse.py), and the bounded
count over them: the writable layer, volumes and its IPC folder; never a user's mounted folder;
disk blocks, not sizes (a sparse file holds none)."""
from __future__ import annotations

from pathlib import Path

from kernel_gateway_ext.containers.diskuse import measure, written_paths


def test_the_layer_volumes_and_socket_folder_count_and_a_users_folder_does_not() -> None:
    info = {
        "GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": "/var/lib/docker/overlay2/abc/diff"}},
        "Mounts": [
            {"Type": "volume", "Source": "/var/lib/docker/volumes/v1/_data", "Destination": "/home/work"},
            {"Type": "bind", "Source": "/run/kge-ipc/gw/k1", "Destination": "/run/kge-ipc"},
            {"Type": "bind", "Source": "/srv/folders/alice/data", "Destination": "/home/work/data"},
            {"Type": "bind", "Source": "/run/kge-ipc-other/x", "Destination": "/x"},
            {"Type": "tmpfs", "Source": "", "Destination": "/tmp"},
        ],
    }
    assert written_paths(info, "/run/kge-ipc") == ["/var/lib/docker/overlay2/abc/diff",
                                                   "/var/lib/docker/volumes/v1/_data", "/run/kge-ipc/gw/k1"]
    assert written_paths({"GraphDriver": {"Name": "vfs"}}, "") == []


def test_blocks_are_counted_up_to_the_bound(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "real").write_bytes(bytes(1 << 20))
    with open(a / "sparse", "wb") as f:
        f.truncate(1 << 40)
    (b / "sub").mkdir()
    (b / "sub" / "x").write_bytes(bytes(1 << 20))
    used, entries = measure([str(a), str(b), str(tmp_path / "gone")], 0, 0)
    assert 2 << 20 <= used < 3 << 20 and entries == 4
    used, _ = measure([str(a), str(b)], 1 << 19, 0)  # past the bound in the first folder: stops there
    assert used < 2 << 20
    _, entries = measure([str(a), str(b)], 0, 2)
    assert 2 < entries < 5  # a little past the bound is enough to know
