"""The gateway on a real 3-node Docker Swarm cluster made on this machine by scripts/swarm-cluster
(one extra engine per node, each in its own network namespace; the host's engine is the manager).

Driven as users meet it: REST and the kernel websocket, jupyter_server --gateway-url, the real
Backend.AI client with a mounted folder, the real skaha client with replicas; then a node pulled
out (its link cut) and put back, and the gateway killed with SIGKILL and started again."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from urllib.parse import urlencode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.clients.v2util import Keys, create_keys, run_cli, run_py
from tests.conftest import IN_CI, Client, ProcessGateway, free_port, new_gateway_id, require_docker, \
    start_process_gateway, stop_process_gateway, wait_http
from tests.faults.test_gateway_restart import skaha_status
from tests.wsclient import KernelWS

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "swarm-cluster"
NODES = 3


@dataclass
class Cluster:
    env: dict[str, str]
    engines: dict[str, str]  # node name → engine URL
    tmp: str

    def engine(self, node: str) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.engines[node], timeout=30)

    def containers(self, gateway_id: str, running_only: bool = False) -> list[tuple[str, str]]:
        out = []
        for node in self.engines:
            for c in self.engine(node).containers.list(all=not running_only,
                                                        filters={"label": f"org.kge.gateway={gateway_id}"}):
                out.append((node, c.short_id))
        return out


def _cluster_problem() -> str | None:
    if os.geteuid() != 0:
        return "the cluster tests need root (network namespaces, extra Docker engines)"
    for tool in ("ip", "nsenter", "unshare", "dockerd", "iptables"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            return f"no {tool} on this machine"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_docker()
    problem = _cluster_problem()
    if problem:
        if IN_CI:
            pytest.fail(f"CI requires the Swarm cluster: {problem}")
        pytest.skip(f"!!! SKIPPED, NEEDS A CLUSTER: {problem}")
    began = time.monotonic()
    up = subprocess.run([str(SCRIPT), "up", str(NODES)], capture_output=True, text=True, timeout=600,
                        env={**os.environ, "KGE_SWARM_IMAGES": "kge-kernel:latest kge-notebook:latest"})
    assert up.returncode == 0, up.stderr[-3000:]
    env = dict(line.split("=", 1) for line in up.stdout.split() if "=" in line)
    engines = dict(p.split("=", 1) for p in env["KGE_SWARM_NODE_ENGINES"].split(","))
    print(f"\n[cluster] {NODES} nodes up in {time.monotonic() - began:.1f} s", file=sys.stderr)
    try:
        yield Cluster(env, engines, str(tmp_path_factory.mktemp("cluster")))
    finally:
        began = time.monotonic()
        down = subprocess.run([str(SCRIPT), "down"], capture_output=True, text=True, timeout=300)
        print(f"\n[cluster] down in {time.monotonic() - began:.1f} s", file=sys.stderr)
        assert down.returncode == 0, down.stderr[-3000:]
        assert_nothing_left()


def assert_nothing_left() -> None:
    """`down` removed every engine, namespace, link, route, rule and file, and left the swarm."""
    assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if n.startswith("kge-n")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "kgesw0" not in links and "kge-n1-h" not in links
    assert "10.214." not in subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    assert not os.path.exists("/run/kge-swarm") and not os.path.exists("/var/lib/kge-swarm")
    assert docker.from_env().info()["Swarm"]["LocalNodeState"] == "inactive"
    assert "-i kgesw0" not in subprocess.run(["iptables", "-S", "DOCKER-USER"], capture_output=True, text=True).stdout
    assert not subprocess.run(["pgrep", "-f", "dockerd --data-root /var/lib/kge-swarm"], capture_output=True).stdout


@pytest.fixture(scope="module")
def gw(cluster: Cluster) -> Iterator[ProcessGateway]:
    gateway = start_process_gateway(cluster.tmp, "--log-level=INFO", env={**cluster.env, "KGE_POOL_SIZES": "{}",
                                                                          "KGE_HARD_CPU_LIMIT": "64"})
    yield gateway
    assert stop_process_gateway(gateway) == 0, open(gateway.log_path).read()[-3000:]
    assert not services(gateway.gateway_id), "SIGTERM left services behind"
    assert not docker.from_env().secrets.list(filters={"label": f"org.kge.gateway={gateway.gateway_id}"})
    assert not cluster.containers(gateway.gateway_id), "SIGTERM left containers on the nodes"


@pytest.fixture(autouse=True)
def no_kernel_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failing test must not leave its kernels to fail the next one's leftover checks."""
    yield
    if "gw" not in request.fixturenames:
        return
    gateway: ProcessGateway = request.getfixturevalue("gw")

    async def clean() -> None:
        client = Client(gateway.url, gateway.token)
        for k in (await client.fetch("GET", "/api/kernels")).json:
            await client.fetch("DELETE", f"/api/kernels/{k['id']}")
    asyncio.run(clean())


async def all_nodes_ready(timeout: float = 60) -> None:
    """Until every worker node reports ready to the manager (after a node or the manager restarted)."""
    deadline = time.monotonic() + timeout
    while True:
        states = [n.attrs["Status"]["State"] for n in docker.from_env().nodes.list(filters={"role": "worker"})]
        if len(states) == NODES and all(st == "ready" for st in states):
            return
        assert time.monotonic() < deadline, f"nodes not ready: {states}"
        await asyncio.sleep(0.5)


def services(gateway_id: str) -> list:
    return docker.from_env().services.list(filters={"label": f"org.kge.gateway={gateway_id}"})


async def start_kernel(client: Client, **body: object) -> dict:
    r = await client.fetch("POST", "/api/kernels", {"name": "python3", **body})
    assert r.status == 201, r.body
    return r.json


async def hostname_via_ws(url: str, kernel_id: str, token: str | None) -> str:
    ws = await KernelWS.connect(url, kernel_id, token)
    try:
        r = await ws.execute("import socket; print(socket.gethostname())")
        return ws.stdout(r).strip()
    finally:
        ws.close()


async def restarting_within(ws: KernelWS, since: float, limit: float) -> float:
    """Seconds from `since` until the websocket hears `restarting` (the kernel was found dead and
    is being started again); fails past `limit`."""
    seen = ""
    while seen != "restarting":
        msg = await ws.recv(timeout=max(0.1, since + limit - time.monotonic()))
        if msg["msg_type"] == "status":
            seen = msg["content"]["execution_state"]
    return time.monotonic() - since


async def test_kernels_spread_over_nodes_and_answer(gw: ProcessGateway, cluster: Cluster) -> None:
    client = Client(gw.url, gw.token)
    kernels = await asyncio.gather(*(start_kernel(client) for _ in range(6)))
    try:
        nodes = [k.get("node") for k in kernels]
        assert all(n in cluster.engines for n in nodes), nodes
        assert len(set(nodes)) >= 2, f"all kernels on one node: {nodes}"
        for k in kernels:
            assert await hostname_via_ws(gw.url, k["id"], gw.token) == f"kernel-{k['id'][:8]}"
        ws = await KernelWS.connect(gw.url, kernels[0]["id"], gw.token)
        status = ws.stdout(await ws.execute("print(open('/proc/self/status').read())"))
        ws.close()
        assert "NoNewPrivs:\t1" in status and "CapEff:\t0000000000000000" in status, status
        # Each kernel container is one Swarm service with our labels, limits and one task.
        svc = {s.attrs["Spec"]["Labels"].get("org.kge.kernel.id"): s for s in services(gw.gateway_id)}
        spec = svc[kernels[0]["id"]].attrs["Spec"]
        limits = spec["TaskTemplate"]["Resources"]["Limits"]
        assert limits["MemoryBytes"] > 0 and limits["NanoCPUs"] > 0 and limits["Pids"] > 0
        assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
        assert spec["TaskTemplate"]["ContainerSpec"]["CapabilityDrop"] == ["ALL"]
        # Kernels cannot reach each other, across nodes or on one (the single-host isolation rule);
        # six kernels on three nodes put two on one node.
        pairs = [next((x, y) for x in kernels for y in kernels if x["node"] != y["node"]),
                 next((x, y) for x in kernels for y in kernels if x is not y and x["node"] == y["node"])]
        for a, b in pairs:
            nets = cluster.engine(b["node"]).containers.list(
                filters={"label": f"org.kge.kernel.id={b['id']}"})[0].attrs["NetworkSettings"]["Networks"]
            ip_b = next(iter(nets.values()))["IPAddress"]
            ws = await KernelWS.connect(gw.url, a["id"], gw.token)
            r = await ws.execute(f"""
import socket
s = socket.socket(); s.settimeout(3)
try:
    s.connect(({ip_b!r}, 52001)); print('REACHED')
except OSError as e:
    print('blocked', e)""")
            ws.close()
            assert "blocked" in ws.stdout(r), (a["node"], b["node"], ws.stdout(r))
    finally:
        for k in kernels:
            await client.fetch("DELETE", f"/api/kernels/{k['id']}")
    assert not services(gw.gateway_id)


async def test_restart_keeps_the_websocket(gw: ProcessGateway) -> None:
    client = Client(gw.url, gw.token)
    k = await start_kernel(client)
    ws = await KernelWS.connect(gw.url, k["id"], gw.token)
    try:
        await ws.execute("x = 41")
        r = await client.fetch("POST", f"/api/kernels/{k['id']}/restart")
        assert r.status == 200, r.body
        out = await ws.execute("print('x' in dir())")
        assert ws.stdout(out).strip() == "False"
    finally:
        ws.close()
        await client.fetch("DELETE", f"/api/kernels/{k['id']}")


def test_v2_kernel_with_a_folder_and_skaha_replicas(gw: ProcessGateway, cluster: Cluster, tmp_path: Path) -> None:
    alice: Keys = create_keys("alice-" + uuid.uuid4().hex[:6])
    url = gw.url.rstrip("/")
    (tmp_path / "input.csv").write_text("a,b\n1,2\n")
    run_cli(["vfolder", "create", "data"], url, alice)
    out = run_py("bai-1.4.2", f"""
        import json
        from ai.backend.client.session import Session
        from ai.backend.client.exceptions import BackendAPIError
        with Session() as s:
            s.VFolder('data').upload(['{tmp_path}/input.csv'], basedir='{tmp_path}')
            k = s.Kernel.get_or_create('python3', client_token='cluster-1', mounts=['data'])
            run = k.execute(code="import socket\\nprint(open('/home/work/data/input.csv').read().split()[1])\\n"
                                 "open('/home/work/data/out.txt','w').write('7')", mode='query')
            info = k.get_info()
            k.destroy()
            try:  # the hard limit allows 64 CPUs, but no node has them: refused, with the reason
                s.Kernel.get_or_create('python3', client_token='cluster-big', resources={{'cpu': 64}})
                big = 'created'
            except BackendAPIError as e:
                big = [e.status, str(e.data)]
        print(json.dumps(dict(run=run, info=info, big=big)))
    """, url, alice)
    assert "1,2" in "".join(o[1] for o in out["run"]["console"] if o[0] == "stdout")
    assert out["info"]["node"] in cluster.engines
    assert out["big"][0] == 406 and "no node can hold" in out["big"][1], out["big"]
    run_cli(["vfolder", "download", "data", "out.txt"], url, alice, cwd=tmp_path)
    assert (tmp_path / "out.txt").read_text() == "7"
    run_cli(["vfolder", "delete", "data"], url, alice)

    out = run_py("skaha-1.7.0", f"""
import json, time
from skaha.session import Session
s = Session(server="{gw.url}skaha", token="{alice.token}")
ids = s.create(name="rep", image="images.canfar.net/skaha/terminal:1.1.2", cores=1, ram=1, kind="headless",
               cmd="hostname", replicas=3)
deadline = time.time() + 90
while True:
    infos = s.info(ids)
    if all(i["status"] in ("Succeeded", "Error") for i in infos) or time.time() > deadline:
        break
    time.sleep(0.3)
logs = s.logs(ids)
print(json.dumps(dict(ids=ids, infos=infos, logs=logs, destroyed=s.destroy(ids))))
""", gw.url, alice)
    assert [i["status"] for i in out["infos"]] == ["Succeeded"] * 3, out["infos"]
    assert all(i["node"] in cluster.engines for i in out["infos"])
    assert all(out["logs"][sid].strip() for sid in out["ids"])
    assert out["destroyed"] == {sid: True for sid in out["ids"]}


async def test_jupyter_server_gateway_url_on_the_cluster(gw: ProcessGateway, cluster: Cluster) -> None:
    root = Path(cluster.tmp) / "js"
    root.mkdir(exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1", "--no-browser",
         "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
         f"--ServerApp.root_dir={root}", "--allow-root", f"--gateway-url={gw.url}",
         f"--GatewayClient.auth_token={gw.token}", "--GatewayClient.request_timeout=60"],
        stdout=open(root / "js.log", "w"), stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/api", proc, root / "js.log")
        js = Client(url, None)
        k = await start_kernel(js)
        assert await hostname_via_ws(url, k["id"], None) == f"kernel-{k['id'][:8]}"
        r = await js.fetch("DELETE", f"/api/kernels/{k['id']}")
        assert r.status == 204
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


async def test_a_lost_node_kills_its_kernels_which_restart_elsewhere(gw: ProcessGateway, cluster: Cluster) -> None:
    """Cut a node's link: its kernel is reported dead within 10 s with the reason and restarted
    on a live node, under the same id, its websocket still open. When the node returns, nothing
    it ran is left running."""
    client = Client(gw.url, gw.token)
    k = await start_kernel(client)
    node = k["node"]
    ws = await KernelWS.connect(gw.url, k["id"], gw.token)
    await ws.execute("x = 1")
    link = f"{node}-h"
    cut = time.monotonic()
    subprocess.run(["ip", "link", "set", link, "down"], check=True)
    try:
        await restarting_within(ws, cut, 10)
        out = await ws.execute("print('x' in dir())", timeout=60)
        assert ws.stdout(out).strip() == "False"  # a fresh kernel, same id and websocket
        model = (await client.fetch("GET", f"/api/kernels/{k['id']}")).json
        assert model["node"] != node and model["node"] in cluster.engines
        log = open(gw.log_path).read()
        assert f"node {node} is down" in log
    finally:
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
        ws.close()
    # The node rejoins; Swarm stops what it ran for a task that is no longer wanted.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = [n for n, _ in cluster.containers(gw.gateway_id, running_only=True) if n == node]
        ready = docker.from_env().nodes.list(filters={"name": node})[0].attrs["Status"]["State"] == "ready"
        if ready and not running:
            break
        await asyncio.sleep(0.5)
    assert ready and not running, f"{node}: ready={ready}, still running {running}"
    await client.fetch("DELETE", f"/api/kernels/{k['id']}")
    assert not services(gw.gateway_id)


async def test_a_node_whose_engine_stops(gw: ProcessGateway, cluster: Cluster) -> None:
    """Stop a node's engine: its kernel dies, is restarted on a node whose engine answers (not on
    the stopped one, which the manager still counts ready for a few heartbeats), and the websocket
    keeps working. The engine comes back (`up` again) and runs nothing of ours."""
    client = Client(gw.url, gw.token)
    k = await start_kernel(client)
    node = k["node"]
    ws = await KernelWS.connect(gw.url, k["id"], gw.token)
    await ws.execute("x = 1")
    pid = int(open(f"/run/kge-swarm/{node[len('kge-'):]}.pid").read())
    stopped = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    try:
        await restarting_within(ws, stopped, 10)
        out = await ws.execute("print('x' in dir())", timeout=90)
        assert ws.stdout(out).strip() == "False"
        model = (await client.fetch("GET", f"/api/kernels/{k['id']}")).json
        assert model["node"] not in (node, "") and model["execution_state"] in ("idle", "busy")
    finally:
        ws.close()
        await asyncio.to_thread(wait_exited, pid)  # an engine shutting down still answers for a while
        up = subprocess.run([str(SCRIPT), "up", str(NODES)], capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stderr[-2000:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = [n for n, _ in cluster.containers(gw.gateway_id, running_only=True) if n == node]
        if not running:
            break
        await asyncio.sleep(0.5)
    assert not running
    await all_nodes_ready()
    await client.fetch("DELETE", f"/api/kernels/{k['id']}")
    assert not services(gw.gateway_id)


def wait_exited(pid: int, timeout: float = 120) -> None:
    """Until process `pid` has exited. A zombie has exited: if the engine is our child (a CI run
    whose setup started it before exec'ing pytest), reap it, or its /proc entry stays for ever."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass  # not our child
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        assert time.monotonic() < deadline, f"process {pid} still running after {timeout} s"
        time.sleep(0.1)


def restart_host_engine() -> float:
    """Stop the host's dockerd (the swarm's manager) and start it again as it was started; the
    seconds it was away. Only the manager goes: the nodes' engines and their containers run on."""
    pids = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True).stdout.split()
    host = [p for p in pids if "/var/lib/kge-swarm" not in open(f"/proc/{p}/cmdline").read()]
    assert len(host) == 1, host
    argv = open(f"/proc/{host[0]}/cmdline").read().rstrip("\0").split("\0")
    began = time.monotonic()
    os.kill(int(host[0]), signal.SIGTERM)
    wait_exited(int(host[0]))
    # setsid --fork: the engine is not our child, so it outlives this test run as it was started.
    subprocess.run(["setsid", "--fork", *argv], stdout=open("/var/log/kge-dockerd.log", "a"),
                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=True)
    deadline = time.monotonic() + 60
    while subprocess.run(["docker", "info", "--format", "{{.Swarm.ControlAvailable}}"], capture_output=True,
                         text=True).stdout.strip() != "true":
        assert time.monotonic() < deadline, "the host engine did not come back as the manager"
        time.sleep(0.2)
    return time.monotonic() - began


async def test_the_manager_engine_restarting(gw: ProcessGateway, cluster: Cluster) -> None:
    """The manager's engine restarts: kernels on the nodes keep running and answering on their
    websockets meanwhile, none is reported dead, and starts work again once it is back.

    The kernel's node is kept from registering with the restarted manager for a while (its
    connections to the manager's port are dropped), so the manager marks it down although it and
    its kernel run on: what a node slow to report in after a manager restart looks like (CI saw
    it once: the kernel was declared dead). The gateway doubts that "down" and keeps the kernel."""
    client = Client(gw.url, gw.token)
    k = await start_kernel(client)
    ws = await KernelWS.connect(gw.url, k["id"], gw.token)
    await ws.execute("z = 3")
    addr = docker.from_env().nodes.list(filters={"name": k["node"]})[0].attrs["Status"]["Addr"]
    block = ["INPUT", "-s", addr, "-p", "tcp", "--dport", "2377", "-j", "DROP"]
    subprocess.run(["iptables", "-I", *block], check=True)
    try:
        away = await asyncio.to_thread(restart_host_engine)
        deadline = time.monotonic() + 30
        while "is down, but it answers" not in open(gw.log_path).read():
            assert time.monotonic() < deadline, "the manager never said the blocked node was down"
            await asyncio.sleep(0.5)
    finally:
        subprocess.run(["iptables", "-D", *block], check=True)
    try:
        out = await ws.execute("print(z)")
        assert ws.stdout(out).strip() == "3"
        deadline = time.monotonic() + 60
        while True:  # the nodes report to the restarted manager; then it places again
            r = await client.fetch("POST", "/api/kernels", {"name": "python3"})
            if r.status == 201 or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        assert r.status == 201, r.body
        await client.fetch("DELETE", f"/api/kernels/{r.json['id']}")
        model = (await client.fetch("GET", f"/api/kernels/{k['id']}")).json
        assert model["execution_state"] == "idle" and model["node"] == k["node"], model
        statuses = [m["content"]["execution_state"] for m in ws.inbox if m.get("msg_type") == "status"]
        assert "restarting" not in statuses and "dead" not in statuses
        print(f"\n[cluster] manager engine away {away:.1f} s", file=sys.stderr)
    finally:
        ws.close()
        await client.fetch("DELETE", f"/api/kernels/{k['id']}")
        await all_nodes_ready()
    assert not services(gw.gateway_id)


async def test_gateway_sigkill_and_restart_adopts_cluster_kernels_and_jobs(cluster: Cluster) -> None:
    gateway_id = new_gateway_id("swarm-")
    env = {**cluster.env, "KGE_POOL_SIZES": "{}"}
    carol = create_keys("carol-" + uuid.uuid4().hex[:6])
    first = start_process_gateway(cluster.tmp, env=env, gateway_id=gateway_id)
    client = Client(first.url, carol.token)
    k = await start_kernel(client)
    ws = await KernelWS.connect(first.url, k["id"], carol.token)
    await ws.execute("y = 5")
    ws.close()
    skaha_h = {"Authorization": f"Bearer {carol.token}"}
    q = urlencode({"name": "job", "image": "images.canfar.net/skaha/terminal:1.1.1", "cmd": "sleep", "args": "600"})
    r = await Client(first.url, None).fetch("POST", f"/skaha/v0/session?{q}", headers=skaha_h, token=None)
    assert r.status == 200, r.body
    job = r.body.decode().strip()
    assert await skaha_status(first.url, job, skaha_h) == "Running"
    job_node = (await Client(first.url, None).fetch("GET", f"/skaha/v0/session/{job}", headers=skaha_h,
                                                    token=None)).json["node"]
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(30)
    second = start_process_gateway(cluster.tmp, env=env, gateway_id=gateway_id)
    try:
        client = Client(second.url, carol.token)
        model = (await client.fetch("GET", f"/api/kernels/{k['id']}")).json
        assert model["id"] == k["id"] and model["node"] == k["node"]
        ws = await KernelWS.connect(second.url, k["id"], carol.token)
        out = await ws.execute("print(y)")
        ws.close()
        assert ws.stdout(out).strip() == "5"  # the same kernel process, adopted
        info = (await Client(second.url, None).fetch("GET", f"/skaha/v0/session/{job}", headers=skaha_h,
                                                     token=None)).json
        assert info["status"] == "Running" and info["node"] == job_node in cluster.engines, info
    finally:
        assert stop_process_gateway(second) == 0
    assert not services(gateway_id)
    assert not cluster.containers(gateway_id)


async def test_a_full_cluster_answers_429_with_the_schedulers_reason(cluster: Cluster) -> None:
    """Each kernel reserves 20 GiB (the whole limit): one per node. The fourth start finds no
    node with room: Swarm cannot place it, and the caller hears so at once, not at a timeout."""
    env = {**cluster.env, "KGE_POOL_SIZES": "{}", "KGE_KERNEL_MEM_LIMIT": "20g", "KGE_SWARM_RESERVATION_SHARE": "1.0",
           "KGE_MEMORY_BUDGET": "", "KGE_MAX_KERNELS_PER_OWNER": "0"}
    await all_nodes_ready()
    full = start_process_gateway(cluster.tmp, env=env)
    client = Client(full.url, full.token)
    try:
        kernels = await asyncio.gather(*(start_kernel(client) for _ in range(NODES)))
        assert sorted(k["node"] for k in kernels) == sorted(cluster.engines)
        began = time.monotonic()
        r = await client.fetch("POST", "/api/kernels", {"name": "python3"})
        assert r.status == 429 and "no suitable node" in r.json["message"], r.body
        assert time.monotonic() - began < 10
        assert len(services(full.gateway_id)) == NODES  # the unplaceable one is gone
    finally:
        assert stop_process_gateway(full) == 0
    assert not services(full.gateway_id)


async def test_a_warm_pool_on_the_cluster(cluster: Cluster) -> None:
    pooled = start_process_gateway(cluster.tmp, env={**cluster.env, "KGE_POOL_SIZES": '{"python3": 3}'})
    client = Client(pooled.url, pooled.token)
    try:
        deadline = time.monotonic() + 60
        while (await client.fetch("GET", "/api")).json["pools"].get("python3", {}).get("ready", 0) < 3:
            assert time.monotonic() < deadline, "the pool did not fill"
            await asyncio.sleep(0.2)
        nodes = {s.attrs["Spec"]["Labels"].get("org.kge.kernel.id"): s for s in services(pooled.gateway_id)}
        assert len(nodes) == 3
        assert len({s.attrs["Spec"]["Labels"].get("org.kge.kernel.id") for s in services(pooled.gateway_id)}) == 3
        k = await start_kernel(client)
        assert (await client.fetch("GET", "/api")).json["pool_hits"] == 1
        assert await hostname_via_ws(pooled.url, k["id"], pooled.token)
        pooled_nodes = {(await client.fetch("GET", f"/api/kernels/{k['id']}")).json["node"]}
        # A v2 start with its own memory and CPUs: a pooled kernel, its running container given them
        # by its node's engine, and its service told (a later placement keeps them).
        bob = create_keys("bob-" + uuid.uuid4().hex[:6])
        out = run_py("bai-1.4.2", """
            import json
            from ai.backend.client.session import Session
            with Session() as s:
                k = s.Kernel.get_or_create('python3', client_token='pool-lim', resources={'ram': 300, 'cpu': 0.5})
                r = k.execute(code="print(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read())", mode='query')
                print(json.dumps(dict(id=k.kernel_id, out=r['console'])))
        """, pooled.url.rstrip("/"), bob)
        assert (await client.fetch("GET", "/api")).json["pool_hits"] == 2
        assert str(300 * 2**20) in json.dumps(out["out"])
        svc = [s for s in services(pooled.gateway_id)
               if s.attrs["Spec"]["Labels"].get("org.kge.owner") == bob.user or
               json.loads(s.attrs["Spec"]["Labels"].get("org.kge.limits") or "{}").get("memory") == 300 * 2**20]
        assert svc and json.loads(svc[0].attrs["Spec"]["Labels"]["org.kge.limits"])["memory"] == 300 * 2**20
        pooled_nodes |= {svc_node for svc_node in [n for n, _ in cluster.containers(pooled.gateway_id, True)]}
        assert len(pooled_nodes) >= 2, pooled_nodes
    finally:
        assert stop_process_gateway(pooled) == 0
    assert not services(pooled.gateway_id)
    assert not cluster.containers(pooled.gateway_id)


async def test_replicas_on_the_cluster_take_over_a_killed_ones_kernels(cluster: Cluster) -> None:
    """Two gateway replicas (scripts/ha-cluster: PostgreSQL, HAProxy) placing on the Swarm cluster:
    a kernel's replica killed, the other adopts the kernel where it runs, state intact."""
    script = ROOT / "scripts" / "ha-cluster"
    up = subprocess.run([str(script), "up", "2"], capture_output=True, text=True, timeout=300,
                        env={**os.environ, **cluster.env, "KGE_POOL_SIZES": "{}"})
    assert up.returncode == 0, up.stderr[-3000:]
    ha = dict(line.split("=", 1) for line in up.stdout.split() if "=" in line)
    try:
        client = Client(ha["BALANCER_URL"], ha["TOKEN"])
        kernels = [await start_kernel(client) for _ in range(2)]
        import asyncpg

        conn = await asyncpg.connect(ha["STORE_URL"])
        homes = {k["id"]: await conn.fetchval("SELECT home FROM records WHERE id = $1", k["id"]) for k in kernels}
        assert set(homes.values()) == {"r1", "r2"}, homes
        k = kernels[0]
        ws = await KernelWS.connect(ha["BALANCER_URL"], k["id"], ha["TOKEN"])
        await ws.execute("q = 7")
        ws.close()
        os.kill(int(ha[f"REPLICA_PID_{homes[k['id']][1:]}"]), signal.SIGKILL)
        r = await client.fetch("GET", f"/api/kernels/{k['id']}")
        assert r.status == 200, (r.status, r.body)
        model = r.json
        assert model["id"] == k["id"] and model["node"] == k["node"] in cluster.engines, model
        ws = await KernelWS.connect(ha["BALANCER_URL"], k["id"], ha["TOKEN"])
        assert ws.stdout(await ws.execute("print(q)")).strip() == "7"
        ws.close()
        assert await conn.fetchval("SELECT home FROM records WHERE id = $1", k["id"]) != homes[k["id"]]
        await conn.close()
        for kern in kernels:
            assert (await client.fetch("DELETE", f"/api/kernels/{kern['id']}")).status == 204
    finally:
        logs = Path(cluster.tmp) / "ha-logs"  # the replicas' logs, kept with the test's output
        down = subprocess.run([str(script), "down"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "KGE_HA_LOGS": str(logs)})
        print(f"\n[cluster] replica logs kept in {logs}", file=sys.stderr)
        assert down.returncode == 0, down.stderr[-2000:]
    assert not [s for s in docker.from_env().services.list(filters={"label": "org.kge.gateway=kge-ha"})]
