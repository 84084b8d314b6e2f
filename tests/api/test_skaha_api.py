"""Skaha API in-process: bad parameters, owners, folders in jobs, expiry, VOSI."""
from __future__ import annotations

from typing import Any

import asyncio
import json
import os
import subprocess
import sys
import uuid
from urllib.parse import urlencode

import pytest

from tests.clients.v2util import create_keys
from tests.conftest import Client

IMAGE = "images.canfar.net/skaha/terminal:1.1.1"


def skaha(gw, keys) -> Client:
    return Client(gw.url, None), {"Authorization": f"Bearer {keys.token}", "X-Skaha-Authentication-Type": "token"}


async def create(gw, keys, **params) -> tuple[int, str]:
    c, h = skaha(gw, keys)
    query = [(k, v) for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs])]
    r = await c.fetch("POST", "/skaha/v0/session?" + urlencode(query), headers=h, token=None)
    return r.status, r.body.decode()


async def wait_status(gw, keys, sid: str, want: tuple[str, ...] = ("Succeeded", "Error")) -> dict:
    c, h = skaha(gw, keys)
    for _ in range(150):
        info = (await c.fetch("GET", f"/skaha/v1/session/{sid}", headers=h, token=None)).json
        if info["status"] in want:
            return info
        await asyncio.sleep(0.2)
    return info


@pytest.mark.parametrize("params,needle", [
    ({"name": "x", "image": IMAGE, "type": "desktop"}, "not offered"),
    ({"name": "x", "image": IMAGE, "type": "spaceship"}, "unknown session type"),
    ({"name": "x", "image": IMAGE, "cores": "3"}, "allowed"),
    ({"name": "x", "image": IMAGE, "ram": "1000"}, "allowed"),
    ({"name": "x", "image": IMAGE, "cores": "two"}, "integer"),
    ({"name": "x", "image": IMAGE, "env": "NOEQUALS"}, "malformed env"),
    ({"name": "x", "image": IMAGE, "args": "'unclosed"}, "malformed args"),
    ({"name": "x", "image": "images.canfar.net/nope/nope:1"}, "unknown image"),
    ({"name": "bad name!", "image": IMAGE}, "'name'"),
    ({"image": IMAGE}, "'name'"),
])
async def test_bad_parameters_start_nothing(gateway, docker_client, params, needle) -> None:
    keys = create_keys("sk-" + uuid.uuid4().hex[:6])
    status, body = await create(gateway, keys, **params)
    assert status == 400 and needle in body, body
    assert not docker_client.containers.list(all=True, filters={"label": f"org.kge.gateway={gateway.gateway_id}"})


async def test_owners_folders_expiry_and_vosi(gateway, docker_client) -> None:
    alice, bob = create_keys("ska-" + uuid.uuid4().hex[:6]), create_keys("skb-" + uuid.uuid4().hex[:6])
    # a folder of alice's is mounted into her jobs; what the job writes outlives it
    await gateway.app.folders.create(alice.user, "results")
    status, sid = await create(gateway, alice, name="writer", image=IMAGE, cmd="sh",
                               args="-c 'echo 42 > /home/work/results/out.txt'")
    assert status == 200
    sid = sid.strip()
    info = await wait_status(gateway, alice, sid)
    assert info["status"] == "Succeeded", info
    c, ha = skaha(gateway, alice)
    _, hb = skaha(gateway, bob)
    assert (await c.fetch("GET", f"/skaha/v0/session/{sid}", headers=hb, token=None)).status == 404
    assert (await c.fetch("DELETE", f"/skaha/v0/session/{sid}", headers=hb, token=None)).status == 404
    assert (await c.fetch("GET", "/skaha/v0/session", headers=hb, token=None)).json == []
    assert (await c.fetch("GET", "/skaha/v0/session", headers={}, token=None)).status == 401
    assert (await c.fetch("DELETE", f"/skaha/v0/session/{sid}", headers=ha, token=None)).status == 200
    assert (await gateway.app.folders.info(alice.user, "results"))["numFiles"] == 1
    assert (await c.fetch("GET", f"/skaha/v0/session/{sid}", headers=ha, token=None)).status == 404
    # expiry: a session past its lifetime is removed with its container
    gateway.app.jobs.lifetimes = {"headless": 1.5}
    status, sid = await create(gateway, alice, name="shortlived", image=IMAGE, cmd="sleep", args="60")
    sid = sid.strip()
    await wait_status(gateway, alice, sid, ("Running",))
    await asyncio.sleep(2.5)
    assert (await c.fetch("GET", f"/skaha/v0/session/{sid}", headers=ha, token=None)).status == 404
    assert not docker_client.containers.list(all=True, filters={"label": f"org.kge.session.id={sid}"})
    # VOSI documents, no auth
    avail = await c.fetch("GET", "/skaha/availability", token=None)
    assert avail.status == 200 and b"<vosi:available>true</vosi:available>" in avail.body
    caps = await c.fetch("GET", "/skaha/capabilities", token=None)
    assert caps.status == 200 and b"skaha/v1" in caps.body
    # the view=all listing carries only the public fields, and everyone's sessions only for operators
    status, sid = await create(gateway, alice, name="listed", image=IMAGE, cmd="true")
    mine = (await c.fetch("GET", "/skaha/v0/session?view=all", headers=ha, token=None)).json
    assert mine and set(mine[0]) == {"userid", "type", "status", "startTime"}
    assert (await c.fetch("GET", "/skaha/v0/session?view=all", headers=hb, token=None)).json == []  # before: alice's
    everyone = (await gateway.client.fetch("GET", "/skaha/v0/session?view=all")).json  # the gateway token
    assert any(e["userid"] == alice.user for e in everyone)
    unknown_view = await c.fetch("GET", f"/skaha/v0/session/{sid.strip()}?view=event", headers=ha, token=None)
    assert unknown_view.status == 200 and json.loads(unknown_view.body)["id"] == sid.strip()
    assert (await c.fetch("POST", f"/skaha/v0/session/{sid.strip()}?action=explode", headers=ha, token=None)).status == 400


async def test_notebook_session_through_the_proxy(gateway, docker_client) -> None:
    """A notebook session's connectURL opens a working Jupyter server: HTTP and a kernel
    websocket through the gateway, authenticated as the owner."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    from tests.wsclient import KernelWS

    owner, other = create_keys("nbo-" + uuid.uuid4().hex[:6]), create_keys("nbx-" + uuid.uuid4().hex[:6])
    status, sid = await create(gateway, owner, name="nb", image="images.canfar.net/skaha/notebook:latest",
                               type="notebook", cores="1", ram="2")
    assert status == 200, sid
    sid = sid.strip()
    info = await wait_status(gateway, owner, sid, ("Running",))
    url = info["connectURL"]
    assert url.endswith(f"/skaha/session/{sid}/") and url.startswith("http://")
    # the server's token is in no env and no label of the container
    (container,) = docker_client.containers.list(filters={"label": f"org.kge.session.id={sid}"})
    token = gateway.app.jobs.notebook_token(sid)
    assert token not in str(container.attrs)
    c = Client(url, None)
    bearer = {"Authorization": f"Bearer {owner.token}"}
    for _ in range(100):
        r = await c.fetch("GET", "/api", headers=bearer, token=None)
        if r.status == 200:
            break
        await asyncio.sleep(0.2)
    assert r.status == 200 and "version" in r.json
    assert (await c.fetch("GET", "/api", token=None)).status == 401
    assert (await c.fetch("GET", "/api", headers={"Authorization": f"Bearer {other.token}"}, token=None)).status == 404
    r = await c.fetch("POST", "/api/kernels", {"name": "python3"}, headers=bearer, token=None)
    assert r.status == 201, r.body
    ws = await KernelWS.connect(url, r.json["id"], owner.token)
    out = await ws.execute("import os\nprint(os.getuid(), os.getcwd())")
    assert ws.stdout(out) == "1000 /home/work\n"
    ws.close()
    # What JupyterLab's upload and download do, with a file far above the server's small body limit.
    import base64
    big = os.urandom(12 * 2**20)
    put = await c.fetch("PUT", "/api/contents/big.bin", {"type": "file", "format": "base64",
                                                          "content": base64.b64encode(big).decode()}, headers=bearer, token=None)
    assert put.status in (200, 201), put.body[:300]
    got = await c.fetch("GET", "/files/big.bin", headers=bearer, token=None)
    assert got.status == 200 and got.body == big
    # a browser visits with ?token= once and then rides on the signed cookie; the visit is redirected
    # away from the token, so the page's scripts (on the gateway's origin) never see it
    second = create_keys(owner.user)  # a second key pair of the same user, revoked below
    first = await AsyncHTTPClient().fetch(url + f"api?token={second.token}&x=1", raise_error=False, follow_redirects=False)
    set_cookie = first.headers.get("Set-Cookie", "")
    cookie = set_cookie.split(";")[0]
    assert first.code == 302 and first.headers["Location"] == f"/skaha/session/{sid}/api?x=1"
    assert cookie.startswith("kge_user=") and "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert f"Path=/skaha/session/{sid}/" in set_cookie

    async def with_cookie(path: str, method: str = "GET", **headers: str) -> int:
        req = HTTPRequest(url + path, method=method, headers={"Cookie": cookie, **headers},
                          body=b"{}" if method == "POST" else None)
        return (await AsyncHTTPClient().fetch(req, raise_error=False)).code

    again = await AsyncHTTPClient().fetch(HTTPRequest(url + "api/kernels", headers={"Cookie": cookie}), raise_error=False)
    assert again.code == 200 and len(json.loads(again.body)) == 1
    # the cookie opens this session only, and not from another site's page (CSRF, websocket hijack)
    assert (await c.fetch("GET", "/api", token=None)).status == 401
    origin = url.split("/skaha/")[0]
    assert await with_cookie("api/kernels", "POST", Origin="https://evil.example") == 403
    assert await with_cookie("api/kernels", "POST", Origin=origin) == 201
    from tornado.websocket import websocket_connect
    kid = json.loads(again.body)[0]["id"]
    ws_url = url.replace("http", "ws", 1) + f"api/kernels/{kid}/channels"
    try:
        await websocket_connect(HTTPRequest(ws_url, headers={"Cookie": cookie, "Origin": "https://evil.example"}))
        raise AssertionError("a cross-site page opened the session's kernel websocket with the cookie")
    except Exception as e:  # noqa: BLE001
        assert "403" in str(e), e
    (await websocket_connect(HTTPRequest(ws_url, headers={"Cookie": cookie, "Origin": origin}))).close()
    # revoking the key pair ends its cookie at once; the owner's other key pair still works
    subprocess.run([sys.executable, "-m", "kernel_gateway_ext", "keys", "revoke", second.access_key], check=True,
                   capture_output=True)
    assert await with_cookie("api/kernels") == 401
    assert (await c.fetch("GET", "/api", headers=bearer, token=None)).status == 200
    # The web page's cookie opens the owner's notebook (its "Open notebook" link) and no one else's:
    # the first visit leaves the session's own cookie; another user's page cookie gets nothing.
    async def page_cookie(keys: Any) -> str:
        r = await Client(gateway.url, None).fetch("POST", "/ui/api/signin", {"access_key": keys.access_key, "secret_key": keys.secret_key},
                          token=None, headers={"Content-Type": "application/json"})
        assert r.status == 200, r.body
        return r.headers["Set-Cookie"].split(";")[0]
    owners, others = await page_cookie(owner), await page_cookie(other)
    opened = await AsyncHTTPClient().fetch(HTTPRequest(url + "api", headers={"Cookie": owners}), raise_error=False)
    assert opened.code == 200 and "kge_user=" in opened.headers.get("Set-Cookie", "")
    refused = await AsyncHTTPClient().fetch(HTTPRequest(url + "api", headers={"Cookie": others}), raise_error=False)
    assert refused.code in (401, 404)
    c2, h = skaha(gateway, owner)
    assert (await c2.fetch("DELETE", f"/skaha/v0/session/{sid}", headers=h, token=None)).status == 200
    assert not docker_client.containers.list(all=True, filters={"label": f"org.kge.session.id={sid}"})
    # kinds no image serves are refused, not hung
    status, body = await create(gateway, owner, name="desk", image=IMAGE, type="desktop")
    assert status == 400 and "desktop" in body


async def test_a_hung_notebook_server_holds_up_only_its_owner(gateway, docker_client) -> None:
    """One user's notebook server that stops answering (here: its container paused, with a dozen
    requests waiting on it) must not queue another user's proxied requests behind it."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    a, b = create_keys("hang-" + uuid.uuid4().hex[:6]), create_keys("ok-" + uuid.uuid4().hex[:6])
    urls = {}
    for keys in (a, b):
        status, sid = await create(gateway, keys, name="nb", image="images.canfar.net/skaha/notebook:latest",
                                   type="notebook", cores="1", ram="1")
        assert status == 200, sid
        urls[keys.user] = (await wait_status(gateway, keys, sid.strip(), ("Running",)))["connectURL"], sid.strip()

    async def get(keys, timeout: float) -> int:
        req = HTTPRequest(urls[keys.user][0] + "api", headers={"Authorization": f"Bearer {keys.token}"},
                          request_timeout=timeout)
        return (await AsyncHTTPClient(force_instance=True).fetch(req, raise_error=False)).code

    for keys in (a, b):  # both servers answer
        for _ in range(100):
            if await get(keys, 5) == 200:
                break
            await asyncio.sleep(0.2)
    (container,) = docker_client.containers.list(filters={"label": f"org.kge.session.id={urls[a.user][1]}"})
    container.pause()
    try:
        hung = [asyncio.ensure_future(get(a, 120)) for _ in range(12)]
        await asyncio.sleep(1)
        assert not any(t.done() for t in hung)
        assert await get(b, 10) == 200  # before: 599 after 10 s, queued behind a's twelve
    finally:
        container.unpause()
    assert set(await asyncio.gather(*hung)) == {200}
    for keys in (a, b):
        c, h = skaha(gateway, keys)
        assert (await c.fetch("DELETE", f"/skaha/v0/session/{urls[keys.user][1]}", headers=h, token=None)).status == 200


async def test_per_owner_session_limits_mounts_and_renewals_are_bounded(gateway, docker_client) -> None:
    """One owner cannot hold more interactive sessions than the context advertises (before: the
    limit was advertised, never enforced), nor headless jobs past theirs; a session mounts at most
    max_mounts folders; renewing forever does not grow the session's record."""
    sessions = gateway.app.jobs
    owner, other = create_keys("lim-" + uuid.uuid4().hex[:6]), create_keys("lio-" + uuid.uuid4().hex[:6])
    c, h = skaha(gateway, owner)
    context = (await c.fetch("GET", "/skaha/v0/context", headers=h, token=None)).json
    assert context["maxInteractiveSessions"] == 3 == sessions.max_interactive_sessions
    sessions.max_interactive_sessions, sessions.max_headless_sessions = 1, 2
    status, nb = await create(gateway, owner, name="nb", image="images.canfar.net/skaha/notebook:latest",
                              type="notebook", cores="1", ram="1")
    assert status == 200, nb
    status, body = await create(gateway, owner, name="nb2", image="images.canfar.net/skaha/notebook:latest",
                                type="notebook", cores="1", ram="1")
    assert status == 403 and "maximum of 1 interactive" in body, body
    jobs = [await create(gateway, owner, name=f"j{i}", image=IMAGE, cmd="sleep", args="60") for i in range(2)]
    assert all(status == 200 for status, _ in jobs), jobs
    status, body = await create(gateway, owner, name="j3", image=IMAGE, cmd="sleep", args="60")
    assert status == 403 and "maximum of 2 headless" in body, body
    assert (await create(gateway, other, name="j", image=IMAGE, cmd="true"))[0] == 200  # others are not held up
    # a finished or deleted session frees its place
    assert (await c.fetch("DELETE", f"/skaha/v0/session/{jobs[0][1].strip()}", headers=h, token=None)).status == 200
    status, third = await create(gateway, owner, name="j3", image=IMAGE, cmd="sleep", args="60")
    assert status == 200, third
    # renewals: the record stays the same size
    sid = third.strip()
    await wait_status(gateway, owner, sid, ("Running",))
    assert (await c.fetch("POST", f"/skaha/v0/session/{sid}?action=renew", headers=h, token=None)).status == 200
    size = len(json.dumps(sessions.records[sid].events))
    for _ in range(200):
        assert (await c.fetch("POST", f"/skaha/v0/session/{sid}?action=renew", headers=h, token=None)).status == 200
    assert len(json.dumps(sessions.records[sid].events)) <= size + 10, sessions.records[sid].events  # before: +200 events
    # at most max_mounts folders in a session, the rest named in its events
    gateway.app.folders.max_mounts = 2
    for name in ("f1", "f2", "f3"):
        await gateway.app.folders.create(other.user, name)
    status, sid = await create(gateway, other, name="mounts", image=IMAGE, cmd="sh",
                               args="-c 'ls /home/work'")
    info = await wait_status(gateway, other, sid.strip())
    assert info["status"] == "Succeeded", info
    logs = (await c.fetch("GET", f"/skaha/v0/session/{sid.strip()}?view=logs",
                          headers=skaha(gateway, other)[1], token=None)).body.decode()
    assert logs.split() == ["f1", "f2"], logs
    events = (await c.fetch("GET", f"/skaha/v0/session/{sid.strip()}?view=events",
                            headers=skaha(gateway, other)[1], token=None)).body.decode()
    assert "FoldersNotMounted" in events and "f3" in events, events


async def test_a_jobs_env_reaches_it_but_is_sealed_in_the_store(gateway) -> None:
    """Skaha env values are often tokens: the job gets them, a dump of the store does not."""
    owner = create_keys("env-" + uuid.uuid4().hex[:6])
    secret = "tok-" + uuid.uuid4().hex
    status, sid = await create(gateway, owner, name="env", image=IMAGE, cmd="sh", args="-c 'echo got:$API_TOKEN'",
                               env=f"API_TOKEN={secret}")
    assert status == 200, sid
    sid = sid.strip()
    assert (await wait_status(gateway, owner, sid))["status"] == "Succeeded"
    c, h = skaha(gateway, owner)
    logs = (await c.fetch("GET", f"/skaha/v0/session/{sid}?view=logs", headers=h, token=None)).body.decode()
    assert f"got:{secret}" in logs
    store = gateway.app.store
    with open(os.path.join(store.state_dir, "state.db"), "rb") as f:
        dump = f.read()
    for suffix in ("-wal", "-journal"):
        path = os.path.join(store.state_dir, "state.db" + suffix)
        if os.path.exists(path):
            dump += open(path, "rb").read()
    assert secret.encode() not in dump  # before: stored as given
    (record,) = [r for r in await store.records("skaha-session", gateway.gateway_id) if r["id"] == sid]
    assert gateway.app.jobs._unsealed(record)["env"] == {"API_TOKEN": secret}
