"""Hostile input must be parsed in linear time with a size cap and answered with a clear 400:
an 80 KiB graphql body once held the event loop (every user's requests) for 154 s."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from tests.api.test_v2_auth_and_input import signed
from tests.clients.v2util import create_keys


async def answered_quickly(gateway, coro) -> tuple[int, object, float]:
    """Run a request while pinging GET /api: the slowest ping shows a blocked event loop."""
    slowest = 0.0
    done = False

    async def ping() -> None:
        nonlocal slowest
        while not done:
            began = time.perf_counter()
            assert (await gateway.client.fetch("GET", "/api")).status == 200
            slowest = max(slowest, time.perf_counter() - began)
            await asyncio.sleep(0.01)

    pinger = asyncio.ensure_future(ping())
    status, body = await coro
    done = True
    await pinger
    return status, body, slowest


async def test_graphql_bodies_that_backtracked_are_400_at_once(gateway) -> None:
    keys = create_keys("hostile-" + uuid.uuid4().hex[:6])
    queries = [
        "compute_sessions(" * 5000,                                        # no closing parenthesis, 80 KiB
        "{ compute_sessions(" + "a" * 9000 + " { sess_id }",               # a long unclosed argument
        "{ compute_sessions(status: " + "x " * 4000 + ") { sess_id } }",   # a value that is not one
        "{ compute_sessions { " + "f " * 5000 + "} }",                      # too many fields
    ]
    for query in queries:
        body = json.dumps({"query": query, "variables": {}}).encode()
        status, answer, slowest = await answered_quickly(gateway, signed(gateway, keys, "POST", "/v2/admin/graphql", body))
        assert status == 400, (status, answer)
        assert answer["title"] and len(json.dumps(answer)) < 512
        assert slowest < 0.5, f"the event loop stalled {slowest:.2f} s"
    # What `backend.ai ps` sends still works.
    ok = json.dumps({"query": "query($status:String) { compute_sessions(status:$status) { sess_id lang status } }",
                     "variables": {"status": "RUNNING"}}).encode()
    status, answer = await signed(gateway, keys, "POST", "/v2/admin/graphql", ok)
    assert status == 200 and answer == {"compute_sessions": []}, answer


async def test_memory_sizes_that_backtracked_are_400_at_once(gateway) -> None:
    keys = create_keys("hostile-mem-" + uuid.uuid4().hex[:6])
    body = json.dumps({"lang": "python3", "clientSessionToken": "hostile-mem",
                       "config": {"instanceMemory": "1" + " " * 80_000 + "x"}}).encode()
    status, answer, slowest = await answered_quickly(gateway, signed(gateway, keys, "POST", "/v2/kernel/create", body))
    assert status == 400 and "memory" in answer["title"], answer
    assert slowest < 0.5, f"the event loop stalled {slowest:.2f} s"


async def test_deeply_nested_json_is_a_400_not_a_500(gateway) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    r = await gateway.client.fetch("POST", "/api/kernels", raw=deep, headers={"Content-Type": "application/json"})
    assert r.status == 400 and "not valid JSON" in r.json["message"], r.body
    keys = create_keys("hostile-deep-" + uuid.uuid4().hex[:6])
    status, answer = await signed(gateway, keys, "POST", "/v2/kernel/create", deep)
    assert status == 400, (status, answer)
    r = await gateway.client.fetch("GET", "/api/kernels")
    assert r.status == 200


def rss_mb() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def test_a_flooding_run_nobody_polls_keeps_bounded_output(gateway) -> None:
    """Measured before: +273 MB of gateway memory in 12 s from one kernel flooding an unpolled run."""
    keys = create_keys("flood-" + uuid.uuid4().hex[:6])
    create = json.dumps({"lang": "python3", "clientSessionToken": "flood-1"}).encode()
    assert (await signed(gateway, keys, "POST", "/v2/kernel/create", create))[0] == 201
    # As fast as the kernel's own memory limit lets it go (unpaced, ipykernel buffers itself to death).
    flood = "import sys, time\nwhile True:\n    sys.stdout.write('x' * 65535 + '\\n'); time.sleep(0.002)"
    run = json.dumps({"mode": "query", "runId": "flood", "code": flood}).encode()
    status, answer = await signed(gateway, keys, "POST", "/v2/kernel/flood-1", run)
    assert status == 200 and answer["result"]["status"] == "continued", answer
    before = rss_mb()
    await asyncio.sleep(8)  # the kernel prints as fast as it can; nobody polls
    grown = rss_mb() - before
    poll = json.dumps({"mode": "continue", "runId": "flood", "code": ""}).encode()
    status, answer = await signed(gateway, keys, "POST", "/v2/kernel/flood-1", poll)
    if status != 200:
        raise AssertionError((status, answer))
    console = answer["result"]["console"]
    kept = sum(len(v) for k, v in console if k == "stdout")
    assert kept <= 8 * 2**20 and any(k == "log" and "dropped" in v for k, v in console), (kept, console[-1:])
    assert grown < 48, f"the gateway grew {grown:.0f} MB in 8 s"
    assert (await signed(gateway, keys, "POST", "/v2/kernel/flood-1/interrupt"))[0] == 204
    await signed(gateway, keys, "DELETE", "/v2/kernel/flood-1")
