"""Kernels without a network (egress off): no interface but loopback, ZMQ over IPC sockets in a
folder of their own. Everything a TCP kernel survives they survive: a pooled hand-out, a restart,
their container killed, the gateway killed and replaced; and no folder outlives its kernel."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import time
import uuid

import docker
import pytest

from kernel_gateway_ext.containers.ipc import IpcFolders
from tests.conftest import Client, new_gateway_id, require_docker, start_process_gateway, stop_process_gateway
from tests.wsclient import KernelWS

IPC_DIR = "/run/kge-ipc"
NO_NETWORK = "import os; print(sorted(os.listdir('/sys/class/net')))"


async def run(url: str, kernel_id: str, token: str, code: str) -> str:
    ws = await KernelWS.connect(url, kernel_id, token)
    try:
        r = await ws.execute(code)
        return ws.stdout(r).strip() if r["reply"]["status"] == "ok" else r["reply"]["ename"]
    finally:
        ws.close()


def container_of(docker_client: docker.DockerClient, kernel_id: str):
    (c,) = docker_client.containers.list(all=True, filters={"label": f"org.kge.kernel.id={kernel_id}"})
    return c


async def test_kernels_without_egress_have_no_network_and_lose_nothing(tmp_path, docker_client) -> None:
    require_docker()
    if IpcFolders.usable(IPC_DIR):
        pytest.skip("!!! SKIPPED: " + IpcFolders.usable(IPC_DIR))
    gid, net = new_gateway_id("ipc-"), "kge-test-ipc-" + uuid.uuid4().hex[:6]
    env = {"KGE_NETWORK": net, "KGE_NETWORK_EGRESS": "false", "KGE_POOL_SIZES": '{"python3": 1}'}
    base = os.path.join(IPC_DIR, gid)
    p1 = start_process_gateway(str(tmp_path), gateway_id=gid, env=env)
    p2 = None
    try:
        c = Client(p1.url, p1.token)
        deadline = time.monotonic() + 60
        while (await c.fetch("GET", "/api")).json["pools"]["python3"]["ready"] < 1:
            assert time.monotonic() < deadline, "the pool was not filled"
            await asyncio.sleep(0.2)
        kid = (await c.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
        assert (await c.fetch("GET", "/api")).json["pool_hits"] == 1  # a pooled one, handed out
        container = container_of(docker_client, kid)
        assert container.attrs["HostConfig"]["NetworkMode"] == "none"
        assert json.loads(container.labels["org.kge.connection"])["transport"] == "ipc"
        folder = os.path.join(base, kid)
        st = os.stat(folder)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (1000, 0o700)
        assert sorted(os.listdir(folder)) == [f"k-{p}" for p in range(50001, 50006)]
        assert stat.S_IMODE(os.stat(base).st_mode) == 0o700
        assert await run(p1.url, kid, p1.token, NO_NETWORK) == "['lo']"
        assert await run(p1.url, kid, p1.token, "x = 6 * 7; print(x)") == "42"

        # A restart (in place: the same container and folder).
        assert (await c.fetch("POST", f"/api/kernels/{kid}/restart", {})).status == 200
        assert await run(p1.url, kid, p1.token, "print('x' in dir())") == "False"
        # The container killed: started again, the same folder bound.
        container.kill()
        deadline = time.monotonic() + 60
        while True:
            try:
                if await run(p1.url, kid, p1.token, "x = 7; print(x)") == "7":
                    break
            except Exception:  # noqa: BLE001 - restarting: the websocket or the execute fails, try again
                await asyncio.sleep(0.2)
            assert time.monotonic() < deadline, "the killed kernel did not come back"
        # The gateway killed, a new process adopts the kernel over its sockets.
        stale = os.path.join(base, "0" * 8 + "-dead-kernel")
        os.mkdir(stale)
        os.utime(stale, (time.time() - 3600, time.time() - 3600))
        p1.proc.send_signal(signal.SIGKILL)
        p1.proc.wait(timeout=30)
        p2 = start_process_gateway(str(tmp_path), gateway_id=gid, env=env)
        assert await run(p2.url, kid, p2.token, "print(x)") == "7"
        assert not os.path.exists(stale), "a folder whose kernel is gone outlived a restart"
        c2 = Client(p2.url, p2.token)
        assert (await c2.fetch("DELETE", f"/api/kernels/{kid}")).status == 204
        assert not os.path.exists(folder)
    finally:
        for gw in (p1, p2):
            if gw is not None and gw.proc.poll() is None:
                assert stop_process_gateway(gw) == 0, open(gw.log_path).read()[-3000:]
        try:
            docker_client.networks.get(net).remove()
        except docker.errors.NotFound:
            pass
    assert not docker_client.containers.list(all=True, filters={"label": f"org.kge.gateway={gid}"})
    assert not os.path.exists(base), os.listdir(base)  # the pool's kernel's folder went too, then the gateway's
