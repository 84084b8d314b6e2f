"""v2 negative paths in-process: signatures, dates, revoked keys, upload limits and escapes.
(Positive paths and signature compatibility are proven by the real clients in tests/clients.)"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from kernel_gateway_ext.auth.hmac_v2 import signature
from tests.clients.v2util import Keys, create_keys

VERSION = "v2.20170315"


async def signed(gw, keys: Keys, method: str, path: str, body: bytes = b"", *, content_type: str = "application/json",
                 date: datetime | None = None, scheme: str = "BackendAI", secret: str | None = None,
                 raw: bool = False) -> tuple[int, Any]:
    date = date or datetime.now(timezone.utc)
    host = urlsplit(gw.url).netloc
    label = "x-sorna-version" if scheme == "Sorna" else "x-backendai-version"
    sig = signature(secret or keys.secret_key, method, path, date.isoformat(), date, host,
                    content_type.split(";")[0], label, VERSION, body)
    headers = {"Date": date.isoformat(), "Content-Type": content_type,
               "Authorization": f"{scheme} signMethod=HMAC-SHA256, credential={keys.access_key}:{sig}",
               ("X-Sorna-Version" if scheme == "Sorna" else "X-BackendAI-Version"): VERSION}
    req = HTTPRequest(gw.url.rstrip("/") + path, method=method, headers=headers,
                      body=body if method in ("POST", "PATCH", "PUT") or body else None, request_timeout=120,
                      allow_nonstandard_methods=True)
    resp = await AsyncHTTPClient().fetch(req, raise_error=False)
    if raw:
        return resp.code, resp
    return resp.code, (json.loads(resp.body) if resp.body else None)


def multipart(files: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="src"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return f"multipart/form-data; boundary={boundary}", b"".join(parts) + f"--{boundary}--\r\n".encode()


@pytest.fixture
def keys(gateway) -> Keys:
    return create_keys("carol-" + uuid.uuid4().hex[:6])


async def test_signatures_dates_and_revocation(gateway, keys: Keys) -> None:
    assert (await signed(gateway, keys, "GET", "/v2/folders/"))[0] == 200
    assert (await signed(gateway, keys, "GET", "/v2/folders/", scheme="Sorna"))[0] == 200
    status, body = await signed(gateway, keys, "GET", "/v2/folders/", secret="wrong")
    assert status == 401 and body["type"].endswith("/auth-failed")
    stale = datetime.now(timezone.utc) - timedelta(minutes=16)
    assert (await signed(gateway, keys, "GET", "/v2/folders/", date=stale))[0] == 401
    skewed_ok = datetime.now(timezone.utc) + timedelta(minutes=14)
    assert (await signed(gateway, keys, "GET", "/v2/folders/", date=skewed_ok))[0] == 200
    # the signature covers the body: a changed body is refused
    status, _ = await signed(gateway, keys, "POST", "/v2/folders/", b'{"name": "x"}')
    assert status == 201
    # a captured request sent again within the clock window is refused (before: it ran again)
    date = datetime.now(timezone.utc)
    assert (await signed(gateway, keys, "DELETE", "/v2/folders/x", date=date))[0] == 204
    status, _ = await signed(gateway, keys, "POST", "/v2/folders/", b'{"name": "x"}')
    assert status == 201
    status, body = await signed(gateway, keys, "DELETE", "/v2/folders/x", date=date)  # the same bytes again
    assert status == 401 and "already used" in body["title"], body
    assert (await signed(gateway, keys, "GET", "/v2/folders/x"))[0] == 200  # the folder is still there
    # no signature at all; a malformed header
    resp = await AsyncHTTPClient().fetch(gateway.url + "v2/folders/", raise_error=False)
    assert resp.code == 401 and json.loads(resp.body)["title"]
    assert resp.headers["Content-Type"] == "application/problem+json"
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "kernel_gateway_ext", "keys", "revoke", keys.access_key], check=True,
                   capture_output=True)
    assert (await signed(gateway, keys, "GET", "/v2/folders/"))[0] == 401
    # GET /v2 needs no auth
    resp = await AsyncHTTPClient().fetch(gateway.url + "v2", raise_error=False)
    assert resp.code == 200 and json.loads(resp.body)["version"] == VERSION


async def test_upload_limits_and_escapes(gateway, keys: Keys, docker_client) -> None:
    status, body = await signed(gateway, keys, "POST", "/v2/kernel/create",
                                json.dumps({"lang": "python3", "clientSessionToken": "upload-test"}).encode())
    assert status == 201, body
    kid = body["kernelId"]
    path = f"/v2/kernel/{kid}/upload"
    for files, why in [([(f"f{i}.txt", b"x") for i in range(21)], "21 files"),
                       ([("big.bin", b"x" * (2**20 + 1))], "over 1 MiB"),
                       ([("../escape.txt", b"x")], "parent dir"), ([("/etc/passwd", b"x")], "absolute"),
                       ([("..%2Fescape.txt", b"x")], "encoded parent dir"), ([("%2Fetc%2Fpasswd", b"x")], "encoded absolute")]:
        ctype, data = multipart(files)
        status, body = await signed(gateway, keys, "POST", path, data, content_type=ctype)
        assert status == 400, (why, body)
    ctype, data = multipart([("ok/nested.txt", b"fine")])
    assert (await signed(gateway, keys, "POST", path, data, content_type=ctype))[0] == 204
    status, body = await signed(gateway, keys, "POST", f"/v2/kernel/{kid}",
                                json.dumps({"mode": "query", "code": "print(open('ok/nested.txt').read())", "runId": None}).encode())
    assert body["result"]["console"] == [["stdout", "fine\n"]]
    # folder uploads refuse escapes too; nothing is written outside the folder
    assert (await signed(gateway, keys, "POST", "/v2/folders/", b'{"name": "box"}'))[0] == 201
    ctype, data = multipart([("../../outside.txt", b"x")])
    assert (await signed(gateway, keys, "POST", "/v2/folders/box/upload", data, content_type=ctype))[0] == 400
    for bad in ("../x", ".hidden", "a" * 65, "sp ace"):
        assert (await signed(gateway, keys, "POST", "/v2/folders/", json.dumps({"name": bad}).encode()))[0] in (400, 404)
    assert (await signed(gateway, keys, "POST", "/v2/folders/", b'{"name": "box"}'))[0] == 400  # exists
    status, _ = await signed(gateway, keys, "DELETE", f"/v2/kernel/{kid}")
    assert status == 200


async def test_admin_sees_everyone_users_see_themselves(gateway) -> None:
    dave, erin = create_keys("dave-" + uuid.uuid4().hex[:4]), create_keys("erin-" + uuid.uuid4().hex[:4])
    admin = create_keys("root-" + uuid.uuid4().hex[:4], admin=True)
    status, body = await signed(gateway, dave, "POST", "/v2/kernel/create",
                                json.dumps({"lang": "python3", "clientSessionToken": "dave-k"}).encode())
    kid = body["kernelId"]
    assert gateway.app.kernel_manager.tokens.locks == {}  # per-token locks do not accumulate
    q = json.dumps({"query": "query($status:String) { compute_sessions(status:$status) { sess_id lang status } }",
                    "variables": {"status": "RUNNING"}}).encode()
    assert (await signed(gateway, dave, "POST", "/v2/admin/graphql", q))[1]["compute_sessions"] == [
        {"sess_id": "dave-k", "lang": "python3", "status": "RUNNING"}]
    assert (await signed(gateway, erin, "POST", "/v2/admin/graphql", q))[1]["compute_sessions"] == []
    assert (await signed(gateway, admin, "POST", "/v2/admin/graphql", q))[1]["compute_sessions"][0]["sess_id"] == "dave-k"
    assert (await signed(gateway, erin, "GET", f"/v2/kernel/{kid}"))[0] == 404
    assert (await signed(gateway, admin, "GET", f"/v2/kernel/{kid}"))[0] == 200
    bad = json.dumps({"query": "{ users { id } }"}).encode()
    assert (await signed(gateway, dave, "POST", "/v2/admin/graphql", bad))[0] == 400
    assert (await signed(gateway, dave, "DELETE", f"/v2/kernel/{kid}"))[0] == 200


async def test_an_admin_naming_an_access_key_gets_that_keys_sessions_only(gateway) -> None:
    """`compute_sessions(access_key: …)`: before, the filter was dropped and an admin got every key's."""
    fay, gus = create_keys("fay-" + uuid.uuid4().hex[:4]), create_keys("gus-" + uuid.uuid4().hex[:4])
    admin = create_keys("root-" + uuid.uuid4().hex[:4], admin=True)
    for keys, token in ((fay, "fay-k"), (gus, "gus-k")):
        status, _ = await signed(gateway, keys, "POST", "/v2/kernel/create",
                                 json.dumps({"lang": "python3", "clientSessionToken": token}).encode())
        assert status == 201

    async def sessions_of(access_key: str) -> list[str]:
        q = json.dumps({"query": "query($ak:String) { compute_sessions(access_key:$ak) { sess_id } }",
                        "variables": {"ak": access_key}}).encode()
        status, body = await signed(gateway, admin, "POST", "/v2/admin/graphql", q)
        assert status == 200, body
        return sorted(s["sess_id"] for s in body["compute_sessions"])

    assert await sessions_of(fay.access_key) == ["fay-k"]
    assert await sessions_of(gus.access_key) == ["gus-k"]
    assert await sessions_of("AKKGE0000000000000000") == []
    q = json.dumps({"query": "{ compute_sessions(access_key:\"%s\") { sess_id } }" % gus.access_key}).encode()
    assert (await signed(gateway, fay, "POST", "/v2/admin/graphql", q))[0] == 403
    for keys, token in ((fay, "fay-k"), (gus, "gus-k")):
        await signed(gateway, keys, "DELETE", f"/v2/kernel/{token}")
