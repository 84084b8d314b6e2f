"""Nothing lost: a gateway killed with SIGKILL (or stopped with keep_on_exit) is replaced by a
new process that adopts every kernel and session with the same id and owner; a variable set
before the crash is still set; containers nobody owns any more are removed."""
from __future__ import annotations

import asyncio
import os
import sqlite3
from urllib.parse import urlencode

from tests.clients.v2util import create_keys
from tests.conftest import (
    Client,
    new_gateway_id,
    require_docker,
    start_process_gateway,
    stop_process_gateway,
)
from tests.wsclient import KernelWS

SKAHA_IMAGE = "images.canfar.net/skaha/terminal:1.1.1"


def ours(docker_client, gateway_id: str, kind: str) -> list:
    return docker_client.containers.list(
        all=True, filters={"label": [f"org.kge.gateway={gateway_id}", f"org.kge.kind={kind}"]})


def records_of(gateway_id: str) -> int:
    db = os.path.join(os.environ["KGE_STATE_DIR"], "state.db")
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM records WHERE gateway = ?", (gateway_id,)).fetchone()[0]


async def value_of_x(url: str, kernel_id: str, token: str) -> str:
    ws = await KernelWS.connect(url, kernel_id, token)
    try:
        r = await ws.execute("print(x)")
        return ws.stdout(r).strip() if r["reply"]["status"] == "ok" else r["reply"]["ename"]
    finally:
        ws.close()


async def skaha_status(url: str, session_id: str, headers: dict[str, str], want: str = "Running") -> str:
    status = ""
    for _ in range(100):
        r = await Client(url, None).fetch("GET", f"/skaha/v0/session/{session_id}", headers=headers, token=None)
        status = r.json["status"] if r.status == 200 else str(r.status)
        if status == want:
            break
        await asyncio.sleep(0.1)
    return status


async def test_sigkill_then_restart_adopts_kernels_and_sessions(tmp_path, docker_client) -> None:
    require_docker()
    alice, bob = create_keys("alice-restart"), create_keys("bob-restart")
    gid = new_gateway_id("proc-")
    p1 = start_process_gateway(str(tmp_path), gateway_id=gid, env={"KGE_POOL_SIZES": '{"python3": 1}'})
    try:
        a = Client(p1.url, alice.token)
        r = await a.fetch("POST", "/api/sessions", {"path": "work/a.ipynb", "type": "notebook",
                                                     "kernel": {"name": "python3"}})
        assert r.status == 201, r.body
        session_id, kid = r.json["id"], r.json["kernel"]["id"]
        ws = await KernelWS.connect(p1.url, kid, alice.token)
        assert (await ws.execute("x = 6 * 7"))["reply"]["status"] == "ok"
        # A v2 kernel (its client token must survive too).
        r = await a.fetch("POST", "/v2/kernel/create", {"lang": "python3", "clientSessionToken": "survivor",
                                                         "limits": {"execTimeout": 30000}},
                            headers={"Content-Type": "application/json"})
        assert r.status == 201, r.body
        assert r.json["kernelId"] == "survivor"  # the session id, as Backend.AI's manager answered
        v2_kid = next(k["id"] for k in (await a.fetch("GET", "/api/kernels")).json if k["id"] != kid)
        skaha_h = {"Authorization": f"Bearer {alice.token}"}
        q = urlencode({"name": "job", "image": SKAHA_IMAGE, "cmd": "sleep", "args": "600"})
        r = await Client(p1.url, None).fetch("POST", f"/skaha/v0/session?{q}", headers=skaha_h, token=None)
        assert r.status == 200, r.body
        skaha_id = r.body.decode().strip()
        assert await skaha_status(p1.url, skaha_id, skaha_h) == "Running"
        for _ in range(300):  # the pool's kernel is ready: a container without a record
            if (await Client(p1.url).fetch("GET", "/api")).json["pools"]["python3"]["ready"] == 1:
                break
            await asyncio.sleep(0.1)
        assert len(ours(docker_client, gid, "kernel")) == 3
    finally:
        p1.proc.kill()  # SIGKILL: no cleanup at all
        p1.proc.wait()
    ws.close()

    # A new process with the same gateway id and store takes everything over.
    p2 = start_process_gateway(str(tmp_path), gateway_id=gid, env={"KGE_KEEP_ON_EXIT": "1"})
    try:
        a, b = Client(p2.url, alice.token), Client(p2.url, bob.token)
        assert sorted(k["id"] for k in (await a.fetch("GET", "/api/kernels")).json) == sorted([kid, v2_kid])
        info = (await a.fetch("GET", "/v2/kernel/survivor")).json  # found by its client token again
        assert info["queryTimeout"] == 30000 and info["executionState"] == "idle", info
        assert (await b.fetch("GET", "/v2/kernel/survivor")).status == 404
        assert (await b.fetch("GET", "/api/kernels")).json == []  # the owner is kept
        assert (await b.fetch("GET", f"/api/kernels/{kid}")).status == 404
        sessions = (await a.fetch("GET", "/api/sessions")).json
        assert [(s["id"], s["kernel"]["id"], s["path"]) for s in sessions] == [(session_id, kid, "work/a.ipynb")]
        assert await skaha_status(p2.url, skaha_id, skaha_h) == "Running"
        assert await value_of_x(p2.url, kid, alice.token) == "42"
        # The pooled kernel had no owner and no record: removed.
        assert sorted(c.labels["org.kge.kernel.id"] for c in ours(docker_client, gid, "kernel")) == sorted([kid, v2_kid])
    finally:
        assert stop_process_gateway(p2) == 0  # keep_on_exit: containers stay for the next process
    assert len(ours(docker_client, gid, "kernel")) == 2 and len(ours(docker_client, gid, "session")) == 1

    p3 = start_process_gateway(str(tmp_path), gateway_id=gid)
    try:
        a = Client(p3.url, alice.token)
        assert await value_of_x(p3.url, kid, alice.token) == "42"
        r = await a.fetch("POST", f"/api/kernels/{kid}/restart")  # an adopted kernel restarts in place
        assert r.status == 200 and r.json["execution_state"] == "idle", r.body
        assert await value_of_x(p3.url, kid, alice.token) == "NameError"
    finally:
        assert stop_process_gateway(p3) == 0  # default: everything goes
    assert not docker_client.containers.list(all=True, filters={"label": f"org.kge.gateway={gid}"})
    assert records_of(gid) == 0


async def test_a_second_gateway_with_a_live_gateways_id_refuses_to_start(tmp_path, docker_client) -> None:
    """Two gateways with one id would adopt or remove each other's containers. The second one, on the
    same engine (another state folder: another host) or in the same state folder, refuses to start
    and says why; the first one's kernel is untouched. Once the first dies (kill -9), the id is free."""
    import signal
    import subprocess
    import sys

    from tests.conftest import TOKEN, free_port

    require_docker()
    gid = new_gateway_id("proc-")
    p1 = start_process_gateway(str(tmp_path), gateway_id=gid)
    try:
        c = Client(p1.url)
        r = await c.fetch("POST", "/api/kernels", {"name": "python3"})
        assert r.status == 201, r.body
        kid = r.json["id"]
        (container,) = ours(docker_client, gid, "kernel")

        def second(state_dir: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "kernel_gateway_ext", f"--port={free_port()}",
                                   f"--auth-token={TOKEN}", f"--gateway-id={gid}"], capture_output=True, text=True,
                                  timeout=90, env={**os.environ, "KGE_STATE_DIR": state_dir})

        other_host = second(str(tmp_path / "elsewhere"))
        assert other_host.returncode != 0 and "held on this Docker engine by a live gateway" in other_host.stderr, \
            other_host.stderr[-2000:]
        same_folder = second(os.environ["KGE_STATE_DIR"])
        assert same_folder.returncode != 0 and "in use by a live gateway of this state folder" in same_folder.stderr
        container.reload()
        assert container.status == "running"
        assert await value_of_x(p1.url, kid, TOKEN) == "NameError"  # the kernel still answers
        assert (await c.fetch("GET", f"/api/kernels/{kid}")).status == 200
    finally:
        p1.proc.send_signal(signal.SIGKILL)
        p1.proc.wait(timeout=30)
    # the dead gateway's lease went with it: a new process takes the id and adopts the kernel
    p2 = start_process_gateway(str(tmp_path), gateway_id=gid)
    try:
        assert (await Client(p2.url).fetch("GET", f"/api/kernels/{kid}")).status == 200
    finally:
        assert stop_process_gateway(p2) == 0
    assert not ours(docker_client, gid, "kernel")
    assert not docker_client.containers.list(all=True, filters={"label": f"org.kge.lease={gid}"})
