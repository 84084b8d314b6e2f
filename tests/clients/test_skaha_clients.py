"""Skaha sessions, tested with the real clients: skaha 1.7.0 (API v0) and canfar 1.5.2 (API v1:
SDK, async SDK and the canfar CLI), against a gateway process with real containers."""
from __future__ import annotations

import uuid

import docker
import pytest

from tests.clients.v2util import Keys, create_keys, run_canfar, run_py
from tests.conftest import ProcessGateway

pytestmark = pytest.mark.clients


@pytest.fixture(scope="module")
def user(process_gateway: ProcessGateway) -> Keys:
    return create_keys("shinybrar-" + uuid.uuid4().hex[:6])


def session_containers(gw: ProcessGateway) -> list:
    return docker.from_env().containers.list(
        all=True, filters={"label": [f"org.kge.gateway={gw.gateway_id}", "org.kge.kind=session"]})


WAIT = """
def wait(s, ids, want=("Succeeded", "Error"), timeout=60):
    import time
    deadline = time.time() + timeout
    while True:
        infos = s.info(ids)
        if all(i["status"] in want for i in infos) or time.time() > deadline:
            return infos
        time.sleep(0.3)
"""


def test_seed_example_with_skaha(process_gateway: ProcessGateway, user: Keys) -> None:
    """The seed's example: three headless replicas running `env` with TEST=test."""
    out = run_py("skaha-1.7.0", WAIT + f"""
import json
from skaha.session import Session
session = Session(server="{process_gateway.url}skaha", token="{user.token}")
session_id = session.create(name="test", image="images.canfar.net/chimefrb/testing:keep", cores=2, ram=8,
                            kind="headless", cmd="env", env={{"TEST": "test"}}, replicas=3)
print(session_id)
info = wait(session, session_id)
print(info)
logs = session.logs(session_id)
events = session.events(session_id)
destroyed = session.destroy(session_id)
print(json.dumps(dict(ids=session_id, info=info, logs=logs, events=events, destroyed=destroyed)))
""", process_gateway.url, user)
    ids = out["ids"]
    assert len(ids) == 3 and len(set(ids)) == 3
    for item in out["info"]:
        assert item["status"] == "Succeeded" and item["type"] == "headless" and item["userid"] == user.user
        assert item["image"] == "images.canfar.net/chimefrb/testing:keep" and item["name"].startswith("test-")
        assert item["requestedRAM"] == "8G" and item["requestedCPUCores"] == "2" and item["connectURL"] == "not-applicable"
        assert item["startTime"].endswith("Z") and item["expiryTime"] > item["startTime"]
    for sid in ids:
        text = out["logs"][sid]
        assert "TEST=test" in text and "REPLICA_COUNT=3" in text and "REPLICA_ID=" in text
    tables = {k: v for d in out["events"] for k, v in d.items()}
    for sid in ids:
        lines = tables[sid].splitlines()
        assert lines[0].split() == ["TYPE", "REASON", "MESSAGE", "FIRST-TIME", "LAST-TIME"]
        assert any("Started" in line for line in lines) and any("exited with code 0" in line for line in lines)
    assert out["destroyed"] == {sid: True for sid in ids}
    assert not session_containers(process_gateway)


def test_skaha_async_images_context(process_gateway: ProcessGateway, user: Keys) -> None:
    out = run_py("skaha-1.7.0", f"""
import asyncio, json
from skaha.session import AsyncSession
from skaha.images import Images
from skaha.context import Context
async def main():
    s = AsyncSession(server="{process_gateway.url}skaha", token="{user.token}")
    ids = await s.create(name="async", image="images.canfar.net/skaha/terminal:1.1.1", kind="headless",
                         cmd="echo", args="from async", cores=1, ram=1)
    for _ in range(100):
        info = await s.info(ids)
        if info[0]["status"] == "Succeeded":
            break
        await asyncio.sleep(0.2)
    logs = await s.logs(ids)
    await s.destroy(ids)
    return ids, info, logs
ids, info, logs = asyncio.run(main())
images = Images(server="{process_gateway.url}skaha", token="{user.token}")
ctx = Context(server="{process_gateway.url}skaha", token="{user.token}")
print(json.dumps(dict(info=info, logs=logs, images=images.fetch(), headless=images.fetch(kind="headless"),
                      notebook=images.fetch(kind="notebook"), ctx=ctx.resources())))
""", process_gateway.url, user)
    assert out["info"][0]["status"] == "Succeeded"
    assert list(out["logs"].values()) == ["from async\n"]
    assert "images.canfar.net/skaha/terminal:latest" in out["images"]
    assert "images.canfar.net/skaha/terminal:latest" in out["headless"]
    assert "images.canfar.net/skaha/notebook:latest" in out["notebook"]
    assert "images.canfar.net/skaha/terminal:latest" not in out["notebook"]  # no Jupyter server in it
    ctx = out["ctx"]
    assert ctx["cores"]["options"] and ctx["memoryGB"]["options"] and "maxInteractiveSessions" in ctx


def test_canfar_sdk_filters_renew_stats_and_limits(process_gateway: ProcessGateway, user: Keys) -> None:
    out = run_py("canfar-1.5.2", f"""
import json, time
from canfar.sessions import Session
s = Session(url="{process_gateway.url}skaha/v1", token="{user.token}")
run = s.create(name="lim", image="images.canfar.net/skaha/terminal:1.1.1", cores=1, ram=1, kind="headless",
               cmd="sh", args="-c 'cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us; sleep 60'")
time.sleep(1.5)
running = s.fetch(kind="headless", status="Running")
before = s.info(run)[0]["expiryTime"]
time.sleep(1.1)
s.renew(run)
after = s.info(run)[0]["expiryTime"]
stats = s.stats()
logs = s.logs(run)
done = s.create(name="oom", image="images.canfar.net/skaha/terminal:1.1.1", cores=1, ram=1, kind="headless",
                cmd="python3", args="-c 'x = bytearray(3 * 2**30)'")
for _ in range(100):
    if s.info(done)[0]["status"] in ("Succeeded", "Error"):
        break
    time.sleep(0.3)
failed = s.fetch(status="Failed")
events = s.events(done)
s.destroy(run + done)
print(json.dumps(dict(running=running, before=before, after=after, stats=stats, logs=logs, failed=failed,
                      events=events, run=run, done=done)))
""", process_gateway.url, user)
    assert [r["id"] for r in out["running"]] == out["run"]
    assert out["running"][0]["ramInUse"].endswith("G") and out["running"][0]["cpuCoresInUse"] != "<none>"
    assert out["after"] > out["before"]
    assert out["stats"]["instances"]["headless"] >= 1 and "cpuCoresAvailable" in out["stats"]["cores"]
    limit, quota = list(out["logs"].values())[0].split()
    assert int(limit) == 2**30 and int(quota) == 100000  # 1 GiB, 1 core (period 100 ms)
    assert [r["id"] for r in out["failed"]] == out["done"] and out["failed"][0]["status"] == "Error"
    table = list(out["events"][0].values())[0] if isinstance(out["events"], list) else str(out["events"])
    assert "OOMKilled" in table or "exited with code 137" in table
    assert not session_containers(process_gateway)


def test_canfar_async(process_gateway: ProcessGateway, user: Keys) -> None:
    out = run_py("canfar-1.5.2", f"""
import asyncio, json
from canfar.sessions import AsyncSession
async def main():
    s = AsyncSession(url="{process_gateway.url}skaha/v1", token="{user.token}")
    ids = await s.create(name="acf", image="images.canfar.net/skaha/terminal:1.1.1", kind="headless",
                         cmd="echo", args="async canfar", replicas=2)
    for _ in range(100):
        info = await s.info(ids)
        if all(i["status"] == "Succeeded" for i in info):
            break
        await asyncio.sleep(0.2)
    logs = await s.logs(ids)
    destroyed = await s.destroy(ids)
    return dict(info=info, logs=logs, destroyed=destroyed)
print(json.dumps(asyncio.run(main())))
""", process_gateway.url, user)
    assert [i["status"] for i in out["info"]] == ["Succeeded", "Succeeded"]
    assert set(out["logs"].values()) == {"async canfar\n"}
    assert all(out["destroyed"].values())


def test_canfar_cli(process_gateway: ProcessGateway, user: Keys, tmp_path) -> None:
    url, home = process_gateway.url, str(tmp_path)
    # canfar joins what follows "--" into one args string, split by words (Skaha's semantics)
    created = run_canfar(["create", "--name", "clijob", "headless", "images.canfar.net/skaha/terminal:1.1.1",
                          "--", "sleep", "30"], url, user, home)
    sid = created.stdout.split("ID: ")[1].split(")")[0]
    ps = run_canfar(["ps"], url, user, home)
    assert sid in ps.stdout
    assert sid in run_canfar(["info", sid], url, user, home).stdout
    import time

    echo = run_canfar(["create", "--name", "clilog", "headless", "images.canfar.net/skaha/terminal:1.1.1",
                       "--", "echo", "cli-out"], url, user, home)
    eid = echo.stdout.split("ID: ")[1].split(")")[0]
    for _ in range(50):
        if "cli-out" in run_canfar(["logs", eid], url, user, home).stdout:
            break
        time.sleep(0.2)
    assert "cli-out" in run_canfar(["logs", eid], url, user, home).stdout
    run_canfar(["delete", "-f", eid], url, user, home)
    assert "Started" in run_canfar(["events", sid], url, user, home).stdout
    run_canfar(["renew", sid], url, user, home)
    assert "CPU" in run_canfar(["stats"], url, user, home).stdout
    assert "terminal" in run_canfar(["image", "ls"], url, user, home).stdout
    run_canfar(["delete", "-f", sid], url, user, home)
    assert sid not in run_canfar(["ps", "--all"], url, user, home).stdout
    run_canfar(["create", "--name", "prunable", "headless", "images.canfar.net/skaha/terminal:1.1.1", "--", "true"],
               url, user, home)
    time.sleep(1.5)
    run_canfar(["prune", "prunable", "headless", "Succeeded"], url, user, home)
    assert "prunable" not in run_canfar(["ps", "--all"], url, user, home).stdout
    assert not session_containers(process_gateway)


def test_canfar_discovers_the_session_service(process_gateway: ProcessGateway, user: Keys, tmp_path) -> None:
    """canfar 1.5 finds a server's session service by `platform#session-1` in its VOSI capabilities
    (with its auth modes); the legacy `Proc#sessions` ids stay for skaha 1.7. Through the client's own
    discovery code (strict: before, 'No complete session capabilities found')."""
    out = run_py("canfar-1.5.2", f"""
import json
from canfar._server_discovery import enrich
from canfar.models.http import Server
server = enrich(Server(name="kge", url="{process_gateway.url}skaha"), token="{user.token}", strict=True, timeout=10)
print(json.dumps({{"url": str(server.url), "version": server.version, "auths": list(server.auths or [])}}))
""", process_gateway.url, user, HOME=str(tmp_path))
    assert out["url"].rstrip("/") == process_gateway.url + "skaha" and out["version"] == "v1", out
    assert set(out["auths"]) >= {"oidc", "x509"}, out
