"""Faults: a kernel container killed from outside, an OOM kill, a failed start, and no engine."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import docker

from tests.api.test_v2_auth_and_input import signed
from tests.clients.v2util import create_keys
from tests.conftest import TOKEN, free_port
from tests.wsclient import KernelWS


async def state_within(c, kernel_id: str, want: str, seconds: float) -> float:
    loop = asyncio.get_running_loop()
    began = loop.time()
    while loop.time() - began < seconds:
        if (await c.fetch("GET", f"/api/kernels/{kernel_id}")).json["execution_state"] == want:
            return loop.time() - began
        await asyncio.sleep(0.05)
    raise AssertionError(f"kernel {kernel_id} not {want} within {seconds} s")


async def test_killed_container_is_dead_within_2s_everywhere_and_restart_revives(make_gateway, docker_client) -> None:
    async with make_gateway("--GatewayKernelManager.autorestart=False") as gateway:
        await _dead_then_revived(gateway, docker_client)


async def _dead_then_revived(gateway, docker_client) -> None:
    c = gateway.client
    kid = (await c.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
    ws = await KernelWS.connect(gateway.url, kid, TOKEN)
    (container,) = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={kid}"})
    container.kill()
    await state_within(c, kid, "dead", 2.0)
    model = (await c.fetch("GET", f"/api/kernels/{kid}")).json
    assert model["reason"] == "exited with code 137"
    while True:  # the websocket was told too
        m = await ws.recv(timeout=2)
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "dead":
            break
    r = await c.fetch("POST", f"/api/kernels/{kid}/restart")
    assert r.status == 200 and r.json["execution_state"] == "idle", r.body
    r = await ws.execute("print(6 * 7)")  # the same websocket works again
    assert ws.stdout(r).strip() == "42"
    ws.close()
    await c.fetch("DELETE", f"/api/kernels/{kid}")


async def test_killed_container_restarts_by_itself_and_says_so_once(gateway, docker_client) -> None:
    """As jupyter_server's restarter: same kernel id, the websocket is told `restarting` once the
    new kernel answers (JupyterLab's "appears to have died" dialog), and it runs code again."""
    c = gateway.client
    kid = (await c.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
    ws = await KernelWS.connect(gateway.url, kid, TOKEN, session="autorestart-1")
    assert ws.stdout(await ws.execute("x = 1; print(x)")) == "1\n"
    (container,) = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={kid}"})
    container.kill()
    statuses = []
    while "restarting" not in statuses:
        m = await ws.recv(timeout=30)
        if m["msg_type"] == "status":
            statuses.append(m["content"]["execution_state"])
    assert "dead" not in statuses, statuses
    model = (await c.fetch("GET", f"/api/kernels/{kid}")).json
    assert model["id"] == kid and model["execution_state"] == "idle", model
    r = await ws.execute("print('x' in dir())")  # a fresh kernel behind the same websocket
    assert ws.stdout(r) == "False\n"
    seen = [m["content"]["execution_state"] for m in ws.inbox if m["msg_type"] == "status"]
    assert "restarting" not in seen, "told twice"
    ws.close()
    await c.fetch("DELETE", f"/api/kernels/{kid}")


async def test_a_kernel_that_keeps_dying_is_left_dead(make_gateway, docker_client) -> None:
    async with make_gateway("--GatewayKernelManager.autorestart_limit=1") as gateway:
        c = gateway.client
        kid = (await c.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
        ws = await KernelWS.connect(gateway.url, kid, TOKEN)
        for attempt in range(2):
            (container,) = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={kid}"})
            container.kill()
            want = "restarting" if attempt == 0 else "dead"
            while True:
                m = await ws.recv(timeout=30)
                if m["msg_type"] == "status" and m["content"]["execution_state"] == want:
                    break
        await state_within(c, kid, "dead", 2.0)
        assert (await c.fetch("GET", f"/api/kernels/{kid}")).json["reason"] == "exited with code 137"
        ws.close()
        await c.fetch("DELETE", f"/api/kernels/{kid}")


async def test_oom_kill_says_so_and_v2_info_has_container_stats(gateway) -> None:
    keys = create_keys("oom-" + uuid.uuid4().hex[:6])
    body = json.dumps({"lang": "python3", "clientSessionToken": "oom-1", "limits": {"maxMem": 96 * 1024}}).encode()
    status, created = await signed(gateway, keys, "POST", "/v2/kernel/create", body)
    assert status == 201, created
    status, info = await signed(gateway, keys, "GET", "/v2/kernel/oom-1")
    assert info["memoryLimit"] == 96 * 1024 and info["memoryUsed"] > 1024  # live figures from the container
    run = json.dumps({"mode": "query", "runId": "r1", "code": "x = bytearray(512 * 2**20); x[::4096] = b'1' * len(x[::4096])"}).encode()
    await signed(gateway, keys, "POST", "/v2/kernel/oom-1", run)
    kid = gateway.app.kernel_manager.get_by_id_or_token(created["kernelId"]).kernel_id
    from tests.conftest import Client
    c = Client(gateway.url, keys.token)
    await state_within(c, kid, "dead", 10.0)
    assert (await c.fetch("GET", f"/api/kernels/{kid}")).json["reason"] == "killed: out of memory"
    status, info = await signed(gateway, keys, "GET", "/v2/kernel/oom-1")
    assert info["executionState"] == "dead"
    await signed(gateway, keys, "DELETE", "/v2/kernel/oom-1")


async def test_failed_start_says_why_leaves_nothing_and_is_counted(make_gateway, docker_client, tmp_path) -> None:
    specs = tmp_path / "kernels"
    (specs / "broken").mkdir(parents=True)
    (specs / "broken" / "kernel.json").write_text(json.dumps({
        "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "broken",
        "language": "python",
        "metadata": {"kernel_provisioner": {"provisioner_name": "kge-docker-provisioner",
                                            "config": {"image": "kge-no-such-image:latest"}}}}))
    async with make_gateway(f"--GatewayKernelSpecManager.extra_kernelspec_dirs={specs}") as gw:
        r = await gw.client.fetch("POST", "/api/kernels", {"name": "broken"})
        assert r.status == 500 and "kge-no-such-image:latest" in r.json["message"] and "not found" in r.json["message"]
        assert not docker_client.containers.list(all=True, filters={"label": f"org.kge.gateway={gw.gateway_id}"})
        assert (await gw.client.fetch("GET", "/api/kernels")).json == []
        metrics = (await gw.client.fetch("GET", "/metrics")).body.decode()
        assert 'kge_kernel_start_failures_total{kernelspec="broken"} 1.0' in metrics


def test_engine_unavailable_at_start(tmp_path) -> None:
    """No engine: the gateway refuses to start with the reason; with --local-kernels it starts,
    says so loudly in GET /api, and runs kernels as local processes (for its own user only)."""
    env = {**os.environ, "KGE_DOCKER_URL": f"unix://{tmp_path}/no-docker.sock"}
    proc = subprocess.run([sys.executable, "-m", "kernel_gateway_ext", "--port=0", f"--auth-token={TOKEN}",
                           "--require-docker"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "no Docker engine answers" in proc.stderr + proc.stdout
    port = free_port()
    log = open(tmp_path / "gw.log", "w")
    gw = subprocess.Popen([sys.executable, "-m", "kernel_gateway_ext", f"--port={port}", f"--auth-token={TOKEN}",
                           "--gateway-id=kge-test-noengine", "--local-kernels"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        from tests.conftest import wait_http
        import urllib.request
        wait_http(f"http://127.0.0.1:{port}/api", gw, tmp_path / "gw.log")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api", headers={"Authorization": f"token {TOKEN}"})
        status = json.loads(urllib.request.urlopen(req).read())
        assert status["docker"] is False and "LOCAL PROCESSES" in status["warnings"][0]
    finally:
        gw.terminate()
        assert gw.wait(timeout=30) == 0
    assert docker.from_env().containers.list(all=True, filters={"label": "org.kge.gateway=kge-test-noengine"}) == []
