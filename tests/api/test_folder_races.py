"""A kernel with a folder mounted can change the folder while its owner uploads to it or lists
it. The gateway runs as root: following a symlink the kernel planted would be root on the host."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from tests.api.test_v2_auth_and_input import multipart, signed
from tests.clients.v2util import create_keys

# What code in the kernel can do to a mounted folder, as fast as it can: a directory appears, is
# renamed away and replaced by a symlink to a host directory, which disappears again.
FLIPPER = """
import os, sys, itertools
base, outside = sys.argv[1], sys.argv[2]
evil = os.path.join(base, "sub")
for n in itertools.count():
    for step in (lambda: os.mkdir(evil), lambda: os.rename(evil, os.path.join(base, f"gone{n}")),
                 lambda: os.symlink(outside, evil), lambda: os.unlink(evil)):
        try:
            step()
        except OSError:
            pass
"""


async def test_swapping_a_directory_for_a_symlink_never_sends_an_upload_outside(gateway, tmp_path: Path) -> None:
    keys = create_keys("race-" + uuid.uuid4().hex[:6])
    status, created = await signed(gateway, keys, "POST", "/v2/folders/", b'{"name": "race"}')
    assert status == 201, created
    base = gateway.app.folders.path_of(created["id"])
    outside = tmp_path / "host-dir"
    outside.mkdir()
    flipper = subprocess.Popen([sys.executable, "-c", FLIPPER, str(base), str(outside)])
    statuses: dict[int, int] = {}
    try:
        for i in range(300):
            ctype, data = multipart([(f"sub/f{i}.txt", b"x"), (f"sub/deeper/g{i}.txt", b"y")])
            status, _ = await signed(gateway, keys, "POST", "/v2/folders/race/upload", data, content_type=ctype)
            statuses[status] = statuses.get(status, 0) + 1
            if i % 10 == 0:  # listing through the same flipping path
                status, _ = await signed(gateway, keys, "GET", "/v2/folders/race/files?path=sub")
                assert status in (200, 404), status
    finally:
        flipper.kill()
        flipper.wait()
    escaped = sorted(str(p.relative_to(outside)) for p in outside.rglob("*"))
    assert not escaped, f"{len(escaped)} uploads landed outside the folder: {escaped[:5]}"
    assert set(statuses) <= {201, 400, 409} and statuses.get(201), statuses  # some got through, none escaped
    # A plain nested upload still works once the kernel stops playing.
    ctype, data = multipart([("calm/a/b.txt", b"z")])
    assert (await signed(gateway, keys, "POST", "/v2/folders/race/upload", data, content_type=ctype))[0] == 201
    assert (base / "calm" / "a" / "b.txt").read_bytes() == b"z"
    status, listing = await signed(gateway, keys, "GET", "/v2/folders/race/files?path=calm")
    assert status == 200 and json.dumps(listing).count("DIRECTORY") == 1, listing


async def test_deleting_a_big_folder_does_not_hold_the_store(gateway) -> None:
    """The removal used to run on the database thread: every signed request waited for it."""
    import asyncio
    import time

    keys = create_keys("bigdel-" + uuid.uuid4().hex[:6])
    status, created = await signed(gateway, keys, "POST", "/v2/folders/", b'{"name": "big"}')
    assert status == 201, created
    base = gateway.app.folders.path_of(created["id"])
    # 150,000 files, as a kernel could leave (made by the shell: Python takes seconds for it)
    subprocess.run(["bash", "-c", "mkdir d{0..149} && for d in d*; do (cd $d && touch f{0..999}); done"],
                   cwd=base, check=True)
    deleting = asyncio.ensure_future(signed(gateway, keys, "DELETE", "/v2/folders/big"))
    await asyncio.sleep(0.05)
    slowest = 0.0
    while not deleting.done():
        began = time.perf_counter()
        assert (await signed(gateway, keys, "GET", "/v2/folders/"))[0] == 200  # needs the store
        slowest = max(slowest, time.perf_counter() - began)
    assert (await deleting)[0] == 204
    assert not base.exists() and not list(base.parent.glob(f".deleting-{created['id']}"))
    assert slowest < 0.25, f"a request waited {slowest:.2f} s for the deletion"


async def test_download_refuses_links_escapes_and_other_owners(gateway, tmp_path: Path) -> None:
    """The folder download (backend.ai-client 1.4's) opens by fd without following links: a kernel
    that plants a symlink to a host file cannot have the gateway (root) read it out."""
    import gzip
    import os

    keys, other = create_keys("dl-" + uuid.uuid4().hex[:6]), create_keys("dlx-" + uuid.uuid4().hex[:6])
    status, created = await signed(gateway, keys, "POST", "/v2/folders/", b'{"name": "dl"}')
    assert status == 201, created
    base = gateway.app.folders.path_of(created["id"])
    (base / "ok.txt").write_text("fine")
    secret = tmp_path / "host-secret"
    secret.write_text("root's")
    os.symlink(secret, base / "link.txt")

    async def download(who, files) -> tuple[int, object]:
        return await signed(gateway, who, "GET", "/v2/folders/dl/download", json.dumps({"files": files}).encode())

    for files in (["link.txt"], ["../x"], ["/etc/passwd"], []):
        status, _ = await download(keys, files)
        assert status == 400, files
    assert (await download(keys, ["nope.txt"]))[0] == 404
    assert (await download(other, ["ok.txt"]))[0] == 404
    status, resp = await signed(gateway, keys, "GET", "/v2/folders/dl/download", json.dumps({"files": ["ok.txt"]}).encode(),
                                raw=True)
    assert status == 200 and resp.headers["X-TOTAL-PAYLOADS-LENGTH"] == "4"
    boundary = resp.headers["Content-Type"].split("boundary=")[1]
    part = resp.body.split(f"--{boundary}".encode())[1]
    head, _, data = part.partition(b"\r\n\r\n")
    assert b'filename="ok.txt"' in head and gzip.decompress(data.rstrip(b"\r\n")) == b"fine"
