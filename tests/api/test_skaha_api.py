"""Skaha API in-process: bad parameters, owners, folders in jobs, expiry, VOSI."""
from __future__ import annotations

import asyncio
import json
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
    gateway.app.sessions.lifetimes = {"headless": 1.5}
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
    # the view=all listing carries only the public fields
    status, sid = await create(gateway, alice, name="listed", image=IMAGE, cmd="true")
    everyone = (await c.fetch("GET", "/skaha/v0/session?view=all", headers=hb, token=None)).json
    assert everyone and set(everyone[0]) == {"userid", "type", "status", "startTime"}
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
    token = gateway.app.sessions.notebook_token(sid)
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
    # a browser visits with ?token= once and then rides on the signed cookie
    first = await AsyncHTTPClient().fetch(url + f"api?token={owner.token}", raise_error=False)
    cookie = first.headers.get("Set-Cookie", "").split(";")[0]
    assert first.code == 200 and cookie.startswith("kge_user=")
    again = await AsyncHTTPClient().fetch(HTTPRequest(url + "api/kernels", headers={"Cookie": cookie}), raise_error=False)
    assert again.code == 200 and len(json.loads(again.body)) == 1
    c2, h = skaha(gateway, owner)
    assert (await c2.fetch("DELETE", f"/skaha/v0/session/{sid}", headers=h, token=None)).status == 200
    assert not docker_client.containers.list(all=True, filters={"label": f"org.kge.session.id={sid}"})
    # kinds no image serves are refused, not hung
    status, body = await create(gateway, owner, name="desk", image=IMAGE, type="desktop")
    assert status == 400 and "desktop" in body
