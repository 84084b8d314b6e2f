"""Folders are bounded: folders per owner, and bytes and files per folder on upload (before: none,
an owner could fill the host's disk through the folder API)."""
from __future__ import annotations

import json
import os
import uuid

from tests.api.test_v2_auth_and_input import multipart, signed
from tests.clients.v2util import create_keys


async def upload_to(gateway, keys, folder: str, files: list[tuple[str, bytes]]) -> tuple[int, dict]:
    ctype, data = multipart(files)
    return await signed(gateway, keys, "POST", f"/v2/folders/{folder}/upload", data, content_type=ctype)


async def test_folder_count_and_quotas(gateway) -> None:
    folders = gateway.app.folders
    folders.max_folders, folders.quota_bytes, folders.quota_files = 2, 2**20, 4
    keys = create_keys("quota-" + uuid.uuid4().hex[:6])
    for name in ("a", "b"):
        assert (await signed(gateway, keys, "POST", "/v2/folders", json.dumps({"name": name}).encode()))[0] == 201
    status, body = await signed(gateway, keys, "POST", "/v2/folders", json.dumps({"name": "c"}).encode())
    assert status == 403 and "maximum of 2 folders" in body["title"], body

    async def upload(files: list[tuple[str, bytes]]) -> tuple[int, dict]:
        return await upload_to(gateway, keys, "a", files)

    assert (await upload([("big1.bin", b"1" * 600_000)]))[0] == 201
    status, body = await upload([("big2.bin", b"2" * 600_000)])
    assert status == 403 and "quota" in body["title"], body
    assert (await upload([("s1", b"x"), ("d/s2", b"x")]))[0] == 201  # big1, s1, d, d/s2: four entries
    status, body = await upload([("s3", b"x")])
    assert status == 403 and "files" in body["title"], body
    status, listing = await signed(gateway, keys, "GET", "/v2/folders/a/files")
    assert sorted(f["filename"] for f in listing["files"]) == ["big1.bin", "d", "s1"]

    # a deep tree made behind the API's back (as a kernel could) is counted without harm
    status, info = await signed(gateway, keys, "GET", "/v2/folders/b")
    path = folders.path_of(info["id"])
    deep = os.path.join(path, *["n"] * 300)
    os.makedirs(deep)
    folders.quota_files = 1000
    status, body = await upload_to(gateway, keys, "b", [("top.txt", b"ok")])
    assert status == 201, body
    for name in ("a", "b"):
        assert (await signed(gateway, keys, "DELETE", f"/v2/folders/{name}"))[0] == 204
