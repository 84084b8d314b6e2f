"""The web page's sign-in and what guards it, at the HTTP level: the cookie's attributes, the CSRF
header on every change made with it, cross-site refusals (forms, websockets, sign-in), tampered and
revoked cookies, the operator-only routes, and the page's assets with their Content-Security-Policy.
(What a person sees is tested in Chromium: tests/browser/test_page.py.)"""
from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

from tests.conftest import TOKEN, Client, Response


class Browser:
    """What a browser sends: the cookie it was given, an Origin on changes, the CSRF header the page adds."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.cookie = ""
        self.csrf = ""
        self.origin = client.url

    async def sign_in(self, access_key: str, secret: str) -> Response:
        r = await self.fetch("POST", "/ui/api/signin", {"access_key": access_key, "secret_key": secret}, csrf=False)
        if r.status == 200:
            self.cookie = r.headers["Set-Cookie"].split(";")[0]
            self.csrf = r.json["csrf"]
        return r

    async def fetch(self, method: str, path: str, body: Any = None, *, csrf: bool = True,
                    origin: str | None = None, raw: bytes | None = None, headers: dict[str, str] | None = None) -> Response:
        hdrs = {"Cookie": self.cookie, **({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
        if method not in ("GET", "HEAD"):
            hdrs["Origin"] = origin or self.origin
            if csrf and self.csrf:
                hdrs["X-KGE-CSRF"] = self.csrf
        return await self.client.fetch(method, path, body, token=False, headers=hdrs, raw=raw)


@pytest.fixture
async def people(gateway: Any) -> dict[str, tuple[str, str]]:
    keypairs = gateway.app.keypairs
    return {"alice": await keypairs.add("page-alice"), "bob": await keypairs.add("page-bob"),
            "root": await keypairs.add("page-root", admin=True)}


async def test_the_page_and_its_assets_carry_a_strict_policy(gateway: Any) -> None:
    anon = Client(gateway.url, token=None)
    for path in ("/", "/ui/", "/ui/static/app.js", "/ui/static/app.css", "/ui/static/logo.svg"):
        r = await anon.fetch("GET", path)
        assert r.status == 200, path
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and r.headers["X-Content-Type-Options"] == "nosniff"
    page = (await anon.fetch("GET", "/")).body.decode()
    assert "<script src=\"/ui/static/app.js\" defer>" in page and "<script>" not in page and "style=" not in page
    assert "http://" not in page and "https://" not in page, "nothing comes from elsewhere"
    assert (await anon.fetch("GET", "/ui/static/../handlers.py")).status in (403, 404)
    assert (await anon.fetch("GET", "/ui/api/me")).status == 401
    assert (await anon.fetch("GET", "/ui/api/items")).status == 401


async def test_sign_in_sets_a_cookie_scripts_cannot_read_and_changes_need_its_csrf_header(
        gateway: Any, people: dict[str, tuple[str, str]]) -> None:
    alice = Browser(Client(gateway.url, token=None))
    ak, sk = people["alice"]
    wrong = await alice.sign_in(ak, sk + "x")
    assert wrong.status == 401 and "wrong access key" in wrong.json["message"] and sk not in wrong.body.decode()
    r = await alice.sign_in(ak, sk)
    assert r.status == 200 and r.json["user"] == "page-alice" and not r.json["admin"]
    attrs = r.headers["Set-Cookie"].lower()
    assert "httponly" in attrs and "samesite=strict" in attrs and "path=/" in attrs and "secure" not in attrs
    assert sk not in r.headers["Set-Cookie"], "the cookie holds no secret"
    assert (await alice.fetch("GET", "/ui/api/me")).json["user"] == "page-alice"
    # Every dialect takes the cookie: reads as they are, changes with the CSRF header only.
    assert (await alice.fetch("GET", "/api/kernels")).status == 200
    assert (await alice.fetch("GET", "/skaha/v0/session")).status == 200
    assert (await alice.fetch("GET", "/v2/folders")).status == 200
    missing = await alice.fetch("POST", "/v2/folders", {"name": "nocsrf"}, csrf=False)
    assert missing.status == 403 and "X-KGE-CSRF" in missing.json["title"]
    forged = await alice.fetch("POST", "/v2/folders", {"name": "forged"}, headers={"X-KGE-CSRF": "0" * 40}, csrf=False)
    assert forged.status == 403
    made = await alice.fetch("POST", "/v2/folders", {"name": "withcsrf"})
    assert made.status == 201, made.body
    # Another site's page cannot make the browser act, even with a (guessed) header.
    assert (await alice.fetch("DELETE", "/v2/folders/withcsrf", origin="https://evil.example")).status == 403
    assert (await alice.fetch("DELETE", "/v2/folders/withcsrf")).status == 204
    # Nor sign a browser in (login CSRF).
    bob = Browser(Client(gateway.url, token=None))
    bob.origin = "https://evil.example"
    assert (await bob.sign_in(*people["bob"])).status == 403
    # A cookie that was changed is no cookie.
    tampered = Browser(Client(gateway.url, token=None))
    name, _, signed = alice.cookie.partition("=")
    fields = signed.strip('"').split("|")  # Tornado's v2 format: …|len:base64(value)|signature
    value = base64.b64decode(fields[4].split(":", 1)[1]).decode().replace("page-alice", "page-bob")
    encoded = base64.b64encode(value.encode()).decode()
    fields[4] = f"{len(encoded)}:{encoded}"
    tampered.cookie = f"{name}={'|'.join(fields)}"
    assert (await tampered.fetch("GET", "/ui/api/me")).status == 401
    out = await alice.fetch("POST", "/ui/api/signout")
    assert out.status == 204 and "kge_page=;" in out.headers["Set-Cookie"].replace('""', "")


async def test_users_see_their_own_and_operators_manage_key_pairs(gateway: Any, people: dict[str, tuple[str, str]]) -> None:
    alice, bob, root = (Browser(Client(gateway.url, token=None)) for _ in range(3))
    await alice.sign_in(*people["alice"])
    await bob.sign_in(*people["bob"])
    await root.sign_in(*people["root"])
    assert (await alice.fetch("POST", "/v2/folders", {"name": "mine"})).status == 201
    assert (await bob.fetch("GET", "/v2/folders/mine")).status == 404
    for path in ("/ui/api/admin/capacity", "/ui/api/admin/keypairs"):
        assert (await alice.fetch("GET", path)).status == 403
        assert (await root.fetch("GET", path)).status == 200
    cap = (await root.fetch("GET", "/ui/api/admin/capacity")).json
    assert cap["nodes"] and {"budget", "promised", "pools"} <= set(cap)
    bad = await root.fetch("POST", "/ui/api/admin/keypairs", {"user": "no spaces"})
    assert bad.status == 400 and "user names" in bad.json["message"]
    assert (await root.fetch("POST", "/ui/api/admin/keypairs", {"user": "carol"}, csrf=False)).status == 403
    made = await root.fetch("POST", "/ui/api/admin/keypairs", {"user": "carol"})
    assert made.status == 201 and made.json["secret_key"]
    carol = Browser(Client(gateway.url, token=None))
    assert (await carol.sign_in(made.json["access_key"], made.json["secret_key"])).status == 200
    # The gateway token signs an operator in too (no access key).
    op = Browser(Client(gateway.url, token=None))
    assert (await op.sign_in("", TOKEN)).json["admin"] is True


async def test_revocation_ends_the_cookie_and_signs_the_live_page_out(gateway: Any, people: dict[str, tuple[str, str]]) -> None:
    alice, root = Browser(Client(gateway.url, token=None)), Browser(Client(gateway.url, token=None))
    await alice.sign_in(*people["alice"])
    await root.sign_in(*people["root"])
    ws_url = gateway.url.replace("http://", "ws://").rstrip("/") + "/ui/api/live"
    with pytest.raises(Exception) as refused:  # another site's page cannot open it with the cookie
        await websocket_connect(HTTPRequest(ws_url, headers={"Cookie": alice.cookie, "Origin": "https://evil.example"}))
    assert "403" in str(refused.value)
    ws = await websocket_connect(HTTPRequest(ws_url, headers={"Cookie": alice.cookie, "Origin": gateway.url.rstrip("/")}))
    first = json.loads(await ws.read_message())
    assert first["type"] == "items" and first["items"] == []
    assert (await root.fetch("DELETE", f"/ui/api/admin/keypairs/{people['alice'][0]}")).status == 204
    while True:  # items pushed meanwhile, then the close
        msg = await ws.read_message()
        if msg is None:
            break
    assert ws.close_code == 4001 and "revoked" in (ws.close_reason or "")
    with pytest.raises(WebSocketClosedError):
        await ws.write_message("{}")
    assert (await alice.fetch("GET", "/ui/api/me")).status == 401
    assert (await alice.fetch("GET", "/api/kernels")).status == 401


async def test_a_gateway_stops_at_once_while_a_page_follows_a_log(tmp_path: Any) -> None:
    """A followed log holds a thread on a stream that only ends with the container; a gateway that
    stops and keeps its containers (keep_on_exit) must close it, or its exit would wait for ever."""
    import time

    import docker

    from tests.conftest import require_docker, start_process_gateway, stop_process_gateway

    require_docker()
    gw = start_process_gateway(str(tmp_path), env={"KGE_KEEP_ON_EXIT": "1", "KGE_POOL_SIZES": "{}"})
    try:
        client = Client(gw.url, gw.token)
        made = await client.fetch("POST", "/skaha/v0/session?name=tail&image=images.canfar.net/skaha/terminal:1.1.1"
                                          "&cmd=sleep&args=600&type=headless")
        assert made.status == 200, made.body
        sid = made.body.decode().strip()
        for _ in range(100):
            if (await client.fetch("GET", f"/skaha/v0/session/{sid}")).json["status"] == "Running":
                break
            await asyncio.sleep(0.2)
        ws = await websocket_connect(HTTPRequest(gw.url.replace("http://", "ws://") + "ui/api/live",
                                                 headers={"Authorization": f"token {gw.token}"}))
        await ws.read_message()
        ws.write_message(json.dumps({"follow": sid}))
        await asyncio.sleep(1.0)  # the stream is open, waiting for output that never comes
        began = time.monotonic()
        assert stop_process_gateway(gw) == 0
        assert time.monotonic() - began < 20
        while (msg := await ws.read_message()) is not None:  # pushes sent before the stop, then the close
            assert json.loads(msg)["type"] in ("items", "log", "log-end")
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
        for c in docker.from_env().containers.list(all=True, filters={"label": f"org.kge.gateway={gw.gateway_id}"}):
            c.remove(force=True)
