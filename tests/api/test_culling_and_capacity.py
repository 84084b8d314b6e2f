"""Giving resources back and refusing what the host cannot hold: idle culling (Jupyter and v2),
per-owner kernel limits and the host's memory budget (403/429 with a reason, v2 as problem+json)."""
from __future__ import annotations

import asyncio
import json
import uuid
from urllib.parse import urlencode

from tests.api.test_v2_auth_and_input import signed
from tests.clients.v2util import create_keys
from tests.conftest import TOKEN, Client
from tests.wsclient import KernelWS


async def wait_gone(c: Client, kernel_id: str, timeout: float = 15.0) -> float:
    loop = asyncio.get_running_loop()
    began = loop.time()
    while loop.time() - began < timeout:
        if (await c.fetch("GET", f"/api/kernels/{kernel_id}")).status == 404:
            return loop.time() - began
        await asyncio.sleep(0.1)
    raise AssertionError(f"kernel {kernel_id} was not culled within {timeout} s")


async def test_idle_kernels_are_culled_busy_and_connected_ones_kept(make_gateway) -> None:
    # 8 s: the idle clock runs from the start, and on a loaded 2-core machine (CI starting up) the
    # steps between a start and its websocket took over 3 s, so the connected kernel was culled.
    async with make_gateway("--GatewayKernelManager.cull_idle_timeout=8") as gw:
        c = gw.client
        # Each kernel gets its websocket or its work right after it starts: cold starts take a
        # while on a busy machine, and the idle clock runs from the start.
        connected = (await c.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
        ws = await KernelWS.connect(gw.url, connected, TOKEN)
        busy = (await c.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
        bws = await KernelWS.connect(gw.url, busy, TOKEN)
        await bws.send(bws.msg("execute_request", {"code": "import time; time.sleep(20)", "silent": False,
                                                    "store_history": False, "user_expressions": {},
                                                    "allow_stdin": False, "stop_on_error": True}))
        bws.close()  # busy, and nobody connected any more
        idle = (await c.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
        await wait_gone(c, idle)
        assert (await c.fetch("GET", f"/api/kernels/{connected}")).status == 200
        assert (await c.fetch("GET", f"/api/kernels/{busy}")).json["execution_state"] == "busy"
        # Once its execution ends and the timeout passes, the busy one goes too.
        await wait_gone(c, busy, timeout=35)
        assert (await c.fetch("GET", f"/api/kernels/{connected}")).status == 200
        ws.close()
        await wait_gone(c, connected)
        metrics = (await c.fetch("GET", "/metrics")).body.decode()
        assert 'kge_culls_total{reason="idle",what="kernel"} 3.0' in metrics


async def test_v2_idle_timeout_is_the_callers_own(gateway) -> None:
    keys = create_keys("idle-" + uuid.uuid4().hex[:6])
    body = json.dumps({"lang": "python3", "clientSessionToken": "idle-1", "limits": {"idleTimeout": 1000}}).encode()
    status, created = await signed(gateway, keys, "POST", "/v2/kernel/create", body)
    assert status == 201, created
    status, info = await signed(gateway, keys, "GET", "/v2/kernel/idle-1")
    assert status == 200 and info["idleTimeout"] == 1000
    for _ in range(60):
        status, _ = await signed(gateway, keys, "GET", "/v2/kernel/idle-1")
        if status == 404:
            break
        await asyncio.sleep(0.1)
    assert status == 404


async def test_per_owner_limit_and_memory_budget(make_gateway) -> None:
    async with make_gateway("--GatewayKernelManager.max_kernels_per_owner=1",
                            "--GatewayKernelManager.memory_budget=3g") as gw:
        alice, bob = create_keys("cap-a-" + uuid.uuid4().hex[:4]), create_keys("cap-b-" + uuid.uuid4().hex[:4])
        a, b = Client(gw.url, alice.token), Client(gw.url, bob.token)
        k1 = (await a.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]  # 2g of 3g
        r = await a.fetch("POST", "/api/kernels", {"name": "python3"})
        assert r.status == 403 and "maximum of 1 kernels" in r.json["message"], r.body
        r = await b.fetch("POST", "/api/kernels", {"name": "python3"})  # bob may, but the budget is spent
        assert r.status == 429 and "memory budget" in r.json["message"], r.body
        # v2 answers problem+json with the same reason; a smaller kernel still fits.
        body = json.dumps({"lang": "python3", "clientSessionToken": "cap-big"}).encode()
        status, problem = await signed(gw, bob, "POST", "/v2/kernel/create", body)
        assert status == 429 and problem["type"].endswith("/over-capacity") and "memory budget" in problem["title"]
        body = json.dumps({"lang": "python3", "clientSessionToken": "cap-tiny", "limits": {"maxMem": 1024}}).encode()
        status, problem = await signed(gw, bob, "POST", "/v2/kernel/create", body)  # 1 MiB: impossible
        assert status == 400 and "minimum of 6 MiB" in problem["title"], problem
        body = json.dumps({"lang": "python3", "clientSessionToken": "cap-nocpu", "config": {"instanceCores": 1e-10}}).encode()
        status, problem = await signed(gw, bob, "POST", "/v2/kernel/create", body)  # would be nano_cpus 0: unlimited
        assert status == 400 and "CPUs below the minimum" in problem["title"], problem
        body = json.dumps({"lang": "python3", "clientSessionToken": "cap-small", "limits": {"maxMem": 512 * 1024}}).encode()
        status, created = await signed(gw, bob, "POST", "/v2/kernel/create", body)
        assert status == 201, created
        # Skaha sessions draw from the same budget.
        q = urlencode({"name": "big", "image": "images.canfar.net/skaha/terminal:1.1.1", "ram": 1})
        r = await Client(gw.url, None).fetch("POST", f"/skaha/v0/session?{q}", token=None,
                                             headers={"Authorization": f"Bearer {alice.token}"})
        assert r.status == 429 and b"memory budget" in r.body, r.body
        metrics = (await gw.client.fetch("GET", "/metrics")).body.decode()
        assert 'kge_start_rejections_total{reason="memory_budget"} 2.0' in metrics
        assert 'kge_start_rejections_total{reason="owner_max"} 1.0' in metrics
        await a.fetch("DELETE", f"/api/kernels/{k1}")
        await signed(gw, bob, "DELETE", "/v2/kernel/cap-small")
