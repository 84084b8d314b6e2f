"""Three gateway replicas sharing a real PostgreSQL, behind a real HAProxy round-robin with no
affinity (scripts/ha-cluster): each dialect's real client goes through the balancer, and a replica
is killed with SIGKILL in the middle; what it served is taken over by a live one, and nothing is
lost, doubled or left behind."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.clients.v2util import Keys, run_cli, run_py
from tests.conftest import IN_CI, Client, jupyter_server_with_gateway, require_docker
from tests.wsclient import KernelWS

pytestmark = pytest.mark.ha
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ha-cluster"
HA_DIR = "/var/lib/kge-ha"
REPLICAS = 3
PER_OWNER = 4  # KGE_MAX_KERNELS_PER_OWNER of every replica
HEADLESS = 3  # KGE_MAX_HEADLESS_SESSIONS


@dataclass
class HA:
    env: dict[str, str]

    @property
    def url(self) -> str:
        return self.env["BALANCER_URL"]

    @property
    def token(self) -> str:
        return self.env["TOKEN"]

    def replica_url(self, i: int) -> str:
        return self.env[f"REPLICA_URL_{i}"]

    def refresh(self) -> None:
        self.env = read_env(subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True, check=True).stdout)

    def kill(self, replica: str) -> None:
        """SIGKILL replica `replica` ('r2')."""
        os.kill(int(self.env[f"REPLICA_PID_{replica[1:]}"]), signal.SIGKILL)

    def revive(self, replica: str) -> None:
        up = subprocess.run([str(SCRIPT), "replica", replica[1:]], capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stderr[-2000:]
        self.refresh()

    def keys(self, user: str) -> Keys:
        env = {**os.environ, "KGE_STORE_URL": self.env["STORE_URL"], "KGE_STATE_DIR": f"{HA_DIR}/state"}
        out = subprocess.run([sys.executable, "-m", "kernel_gateway_ext", "keys", "create", f"--user={user}", "--json"],
                             capture_output=True, text=True, check=True, env=env, timeout=60).stdout
        d = json.loads(out)
        return Keys(d["access_key"], d["secret_key"], user)

    def containers(self) -> list:
        return docker.from_env().containers.list(all=True, filters={"label": f"org.kge.gateway={self.env['GATEWAY_ID']}"})


def read_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.split() if "=" in line)


async def home_of(ha: HA, kind: str, ident: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(ha.env["STORE_URL"])
    try:
        home = await conn.fetchval("SELECT home FROM records WHERE kind = $1 AND (id = $2 OR token = $2)", kind, ident)
        assert home, f"no {kind} record {ident}"
        return str(home)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HA]:
    require_docker()
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI requires the HA cluster (root: PostgreSQL and replicas are started as services)")
        pytest.skip("!!! SKIPPED, NEEDS ROOT: scripts/ha-cluster starts PostgreSQL and HAProxy")
    began = time.monotonic()
    # Every replica gets these (the per-owner limit is checked across them below).
    settings = {"KGE_MAX_KERNELS_PER_OWNER": str(PER_OWNER), "KGE_MAX_HEADLESS_SESSIONS": str(HEADLESS),
                "KGE_POOL_SIZES": "{}"}
    up = subprocess.run([str(SCRIPT), "up", str(REPLICAS)], capture_output=True, text=True, timeout=600,
                        env={**os.environ, **settings})
    assert up.returncode == 0, up.stderr[-3000:]
    print(f"\n[ha] PostgreSQL, {REPLICAS} replicas and HAProxy up in {time.monotonic() - began:.1f} s", file=sys.stderr)
    cluster = HA(read_env(up.stdout))
    try:
        yield cluster
    finally:
        logs = tmp_path_factory.mktemp("ha-logs")
        down = subprocess.run([str(SCRIPT), "down"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "KGE_HA_LOGS": str(logs)})
        print(f"\n[ha] replica logs kept in {logs}", file=sys.stderr)
        assert down.returncode == 0, down.stderr[-3000:]
        assert not os.path.exists(HA_DIR)
        assert not subprocess.run(["pgrep", "-f", "replica-id=r"], capture_output=True).stdout
        assert not cluster.containers()


@pytest.fixture(autouse=True)
def every_replica_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with all replicas up (a test kills one) and leaves no kernel or session."""
    yield
    if "ha" not in request.fixturenames:
        return
    cluster: HA = request.getfixturevalue("ha")
    for i in range(1, REPLICAS + 1):
        cluster.revive(f"r{i}")

    async def clean() -> None:
        client = Client(cluster.url, cluster.token)
        for k in (await client.fetch("GET", "/api/kernels")).json:
            await client.fetch("DELETE", f"/api/kernels/{k['id']}")
    asyncio.run(clean())
    deadline = time.monotonic() + 30
    while cluster.containers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not cluster.containers(), "a test left containers behind"


async def execute_until(ws: KernelWS, code: str, want: str, limit: float) -> float:
    """Send `code` until its output is `want` (messages sent while the websocket's far end was
    reconnecting are lost, as in JupyterLab); seconds taken."""
    began = time.monotonic()
    while True:
        try:
            r = await ws.execute(code, timeout=5)
            if ws.stdout(r).strip() == want:
                return time.monotonic() - began
        except (asyncio.TimeoutError, TimeoutError):
            pass
        assert time.monotonic() - began < limit, f"no {want!r} within {limit} s"


async def test_any_replica_serves_any_kernel_and_a_killed_home_loses_nothing(ha: HA) -> None:
    client = Client(ha.url, ha.token)
    kernels = [(await client.fetch("POST", "/api/kernels", {"name": "python3"})).json for _ in range(REPLICAS)]
    homes = {k["id"]: await home_of(ha, "kernel", k["id"]) for k in kernels}
    assert len(set(homes.values())) >= 2, homes  # round-robin: starts land on different replicas
    listed = (await client.fetch("GET", "/api/kernels")).json
    assert sorted(k["id"] for k in listed) == sorted(homes)  # whichever replica answered the list
    k = kernels[0]["id"]
    for i in range(1, REPLICAS + 1):  # the same kernel through each replica, websockets included
        ws = await KernelWS.connect(ha.replica_url(i), k, ha.token)
        r = await ws.execute(f"v{i} = {i}; import socket; print(socket.gethostname())")
        ws.close()
        assert ws.stdout(r).strip() == f"kernel-{k[:8]}"
    # Two websockets of one session on two replicas: both hear the kernel.
    session = uuid.uuid4().hex
    a = await KernelWS.connect(ha.replica_url(1), k, ha.token, session=session)
    b = await KernelWS.connect(ha.replica_url(2), k, ha.token, session=session)
    assert a.stdout(await a.execute("print(v1 + v2 + v3)")).strip() == "6"
    assert b.stdout(await b.execute("print('b')")).strip() == "b"
    a.close()
    b.close()

    home = homes[k]
    killed_at = time.monotonic()
    ha.kill(home)
    r = await client.fetch("GET", f"/api/kernels/{k}")
    took = time.monotonic() - killed_at
    assert r.status == 200 and r.json["id"] == k, r.body
    ws = await KernelWS.connect(ha.url, k, ha.token)
    assert ws.stdout(await ws.execute("print(v1 + v2 + v3)")).strip() == "6"  # the same process
    ws.close()
    assert await home_of(ha, "kernel", k) not in ("", home)
    assert sorted(k["id"] for k in (await client.fetch("GET", "/api/kernels")).json) == sorted(homes)
    print(f"\n[ha] kernel served again {took:.1f} s after its replica's SIGKILL", file=sys.stderr)
    assert took < 15


@pytest.fixture
def jupyter_server(ha: HA, tmp_path: Path) -> Iterator[str]:
    with jupyter_server_with_gateway(tmp_path, ha.url, ha.token) as url:
        yield url


async def test_jupyter_server_gateway_url_through_the_balancer_while_a_replica_dies(ha: HA, jupyter_server: str) -> None:
    """What JupyterLab does: jupyter_server --gateway-url=BALANCER starts a kernel and opens its
    websocket; the replica serving the kernel is killed; the notebook's websocket carries on
    (jupyter_server reconnects through the balancer) with the kernel's state."""
    js = Client(jupyter_server, None)
    r = await js.fetch("POST", "/api/kernels", {"name": "python3"})
    assert r.status == 201, r.body
    k = r.json["id"]
    ws = await KernelWS.connect(jupyter_server, k, None)
    assert ws.stdout(await ws.execute("n = 41; print('ok')")).strip() == "ok"
    ha.kill(await home_of(ha, "kernel", k))
    took = await execute_until(ws, "print(n + 1)", "42", 60)
    ws.close()
    print(f"\n[ha] notebook websocket answered again {took:.1f} s after the kernel's replica died", file=sys.stderr)
    assert (await js.fetch("DELETE", f"/api/kernels/{k}")).status == 204


def test_backendai_client_through_the_balancer(ha: HA) -> None:
    """backend.ai-client 1.4.2: get-or-create by client token from two processes (one kernel),
    runs continued and given input across replicas, then the kernel's replica killed: the same
    token reaches the same kernel, its state intact."""
    alice = ha.keys("alice-" + uuid.uuid4().hex[:6])
    code = """
        import json
        from ai.backend.client.session import Session
        with Session() as s:
            k = s.Kernel.get_or_create('python3', client_token='ha-tok')
            again = s.Kernel.get_or_create('python3', client_token='ha-tok')
            w = k.execute(code='name = input("who? ")\\nprint("hi", name)', mode='query')
            i = k.execute(code='bob', run_id=w['runId'], mode='input')
            c1 = k.execute(code='import time\\nfor n in range(4):\\n    print(n, flush=True); time.sleep(1)', mode='query')
            runs = [c1]
            while runs[-1]['status'] == 'continued':
                runs.append(k.execute(code='', run_id=c1['runId'], mode='continue'))
            print(json.dumps(dict(id=k.kernel_id, same=again.kernel_id == k.kernel_id, w=w, i=i, runs=runs)))
    """
    out = run_py("bai-1.4.2", code, ha.url.rstrip("/"), alice)
    assert out["same"] and out["w"]["status"] == "waiting-input" and "hi bob" in out["i"]["console"][0][1]
    assert "".join(item[1] for r in out["runs"] for item in r["console"]) == "0\n1\n2\n3\n"
    for _ in range(REPLICAS):  # `backend.ai ps` lists it whichever replica answers
        assert "ha-tok" in run_cli(["ps"], ha.url.rstrip("/"), alice).stdout
    ha.kill(asyncio.run(home_of(ha, "kernel", out["id"])))
    after = run_py("bai-1.4.2", """
        import json
        from ai.backend.client.session import Session
        with Session() as s:
            k = s.Kernel.get_or_create('python3', client_token='ha-tok')
            r = k.execute(code='print(name)', mode='query')
            k.destroy()
            print(json.dumps(dict(id=k.kernel_id, out=r['console'])))
    """, ha.url.rstrip("/"), alice)
    assert after["id"] == out["id"] and after["out"] == [["stdout", "bob\n"]]


def test_skaha_client_through_the_balancer(ha: HA) -> None:
    """skaha 1.7: three replicas of a headless job, created through the balancer; a gateway
    replica killed while they run; their info, logs and destruction work through the rest."""
    user = ha.keys("skaha-" + uuid.uuid4().hex[:6])
    server = ha.url + "skaha"
    made = run_py("skaha-1.7.0", f"""
        import json
        from skaha.session import Session
        s = Session(server="{server}", token="{user.token}")
        ids = s.create(name="ha", image="images.canfar.net/skaha/terminal:1.1.1", cores=1, ram=1, kind="headless",
                       cmd="sh", args="-c 'echo started; sleep 600'", replicas=3)
        print(json.dumps(dict(ids=ids)))
    """, ha.url, user)
    ids = made["ids"]
    assert len(set(ids)) == 3
    homes = {asyncio.run(home_of(ha, "skaha-session", i)) for i in ids}
    ha.kill(sorted(homes)[0])
    out = run_py("skaha-1.7.0", f"""
        import json, logging, time
        from skaha.session import Session
        errors = []  # the client logs a request that failed and leaves its session out of the answer
        class Errors(logging.Handler):
            def emit(self, record):
                errors.append(record.getMessage())
        logging.getLogger().addHandler(Errors(logging.ERROR))
        s = Session(server="{server}", token="{user.token}")
        ids = {ids!r}
        deadline = time.time() + 60
        while True:
            infos = s.info(ids)
            if [i.get("status") for i in infos] == ["Running"] * len(ids) or time.time() > deadline:
                break
            time.sleep(0.5)
        logs = s.logs(ids)
        listed = [x["id"] for x in s.fetch()]
        destroyed = s.destroy(ids)
        print(json.dumps(dict(infos=infos, logs=logs, listed=listed, destroyed=destroyed, errors=errors)))
    """, ha.url, user)
    assert out["errors"] == [], out["errors"]  # no request failed while the killed replica's part moved
    assert [i["status"] for i in out["infos"]] == ["Running"] * 3, out["infos"]
    assert all("started" in out["logs"][i] for i in ids)
    assert sorted(out["listed"]) == sorted(ids)
    assert out["destroyed"] == {i: True for i in ids}


async def test_the_per_owner_limit_holds_across_replicas_under_concurrent_starts(ha: HA) -> None:
    """Twice the limit started at once, dealt to the replicas in turn (3, 3 and 2 of the 8, so no
    replica alone can make the limit's 4): exactly the limit succeeds, on several replicas, and
    the rest get the one-gateway refusal (403)."""
    carol = ha.keys("carol-" + uuid.uuid4().hex[:6])
    client = Client(ha.url, carol.token)
    # Not through the balancer: with a replica just revived and not yet checked, it may deal the
    # 8 to two replicas, and one of them may take all 4 (CI saw that once).
    replicas = [Client(ha.replica_url(i), carol.token) for i in range(1, REPLICAS + 1)]
    answers = await asyncio.gather(*(replicas[n % REPLICAS].fetch("POST", "/api/kernels", {"name": "python3"})
                                     for n in range(2 * PER_OWNER)))
    made = [r.json["id"] for r in answers if r.status == 201]
    refused = [r for r in answers if r.status != 201]
    assert len(made) == PER_OWNER, [(r.status, r.body[:120]) for r in answers]
    assert all(r.status == 403 and "maximum of 4 kernels" in r.json["message"] for r in refused)
    assert len({await home_of(ha, "kernel", k) for k in made}) >= 2  # made on several replicas
    for k in made:
        assert (await client.fetch("DELETE", f"/api/kernels/{k}")).status == 204


def stop_replica(ha: HA, replica: str) -> None:
    """SIGTERM: a replica's graceful stop (it keeps its kernels for the others to take over)."""
    pid = int(ha.env[f"REPLICA_PID_{replica[1:]}"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}"), f"{replica} did not stop"


async def test_a_rolling_restart_fails_no_request_of_a_client_that_retries(ha: HA) -> None:
    """Replicas restarted one by one (SIGTERM, start again) while a client keeps calling: every
    call succeeds within three tries (what jupyter_server's GatewayClient does), the kernels keep
    their state, none is lost."""
    client = Client(ha.url, ha.token)
    kernels = [(await client.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"] for _ in range(REPLICAS)]
    for i, k in enumerate(kernels):
        ws = await KernelWS.connect(ha.url, k, ha.token)
        await ws.execute(f"mark = {i}")
        ws.close()
    stats = {"calls": 0, "retried": 0, "failed": 0}
    stop = asyncio.Event()

    async def call(method: str, path: str, body: dict | None = None) -> None:
        for attempt in range(3):
            r = await client.fetch(method, path, body, timeout=30, headers={"Content-Type": "application/json"})
            if r.status < 500:
                stats["calls"] += 1
                stats["retried"] += attempt > 0
                assert r.status == 200, (path, r.status, r.body[:200])
                return
            await asyncio.sleep(1)
        stats["failed"] += 1

    async def keep_calling() -> None:
        while not stop.is_set():
            for k in kernels:  # an execute (v2 REST) on each kernel, and the list
                await call("POST", f"/v2/kernel/{k}", {"mode": "query", "code": "1"})
            await call("GET", "/api/kernels")
            await asyncio.sleep(0.05)

    caller = asyncio.ensure_future(keep_calling())
    began = time.monotonic()
    for i in range(1, REPLICAS + 1):
        await asyncio.to_thread(stop_replica, ha, f"r{i}")
        await asyncio.to_thread(ha.revive, f"r{i}")
    stop.set()
    await caller
    took = time.monotonic() - began
    print(f"\n[ha] rolling restart of {REPLICAS} replicas in {took:.1f} s: {stats['calls']} calls, "
          f"{stats['retried']} needed a retry, {stats['failed']} failed", file=sys.stderr)
    assert stats["failed"] == 0 and stats["calls"] > 30
    for i, k in enumerate(kernels):  # the same kernel processes, adopted by the replicas left
        ws = await KernelWS.connect(ha.url, k, ha.token)
        assert ws.stdout(await ws.execute("print(mark)")).strip() == str(i)
        ws.close()


async def test_a_stopping_replica_finishes_the_requests_it_is_serving(ha: HA) -> None:
    """SIGTERM while a replica serves two executes that take 2 s (one on its own kernel, one it
    passes on to the kernel's home): both get their whole answer before it closes its
    connections. A response cut after its headers (what CI saw once during a rolling restart) is
    one no balancer or client can send again."""
    client = Client(ha.url, ha.token)
    kernels = [(await client.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"] for _ in range(REPLICAS)]
    homes = {k: await home_of(ha, "kernel", k) for k in kernels}
    stopping = homes[kernels[0]]
    elsewhere = next(k for k, home in homes.items() if home != stopping)  # round-robin: two homes at least
    direct = Client(ha.replica_url(int(stopping[1:])), ha.token)
    code = "import time; time.sleep(2); print('done')"
    calls = [asyncio.ensure_future(direct.fetch("POST", f"/v2/kernel/{k}", {"mode": "query", "code": code},
                                                headers={"Content-Type": "application/json"}, timeout=30))
             for k in (kernels[0], elsewhere)]
    await asyncio.sleep(0.5)
    await asyncio.to_thread(stop_replica, ha, stopping)
    for r in await asyncio.gather(*calls):
        assert r.status == 200, (r.status, r.body[:300])
        result = r.json["result"]
        assert result["status"] == "finished" and ["stdout", "done\n"] in result["console"], result


async def test_a_kernel_stays_listed_and_found_while_its_dead_replica_is_taken_over(ha: HA) -> None:
    """The list and the kernel itself, asked of every live replica over and over from a SIGKILL of
    the kernel's home until well after another replica adopted it: every list names it and every
    GET finds it. A takeover under way (lease run out, records moved, adoption not done) is waited
    for, never answered without the kernel."""
    client = Client(ha.url, ha.token)
    kernels = [(await client.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"] for _ in range(REPLICAS)]
    k = kernels[0]
    home = await home_of(ha, "kernel", k)
    live = [Client(ha.replica_url(i), ha.token) for i in range(1, REPLICAS + 1) if f"r{i}" != home]
    ha.kill(home)
    answers, missing, moved_at = 0, [], None
    deadline = time.monotonic() + 60

    async def keep_listing(c: Client) -> None:
        nonlocal answers
        while moved_at is None or time.monotonic() < moved_at + 3:
            r = await c.fetch("GET", "/api/kernels", timeout=60)
            assert r.status == 200, r.body[:200]
            answers += 1
            ids = {x["id"] for x in r.json}
            if set(kernels) - ids:
                missing.append(sorted(set(kernels) - ids))
            r = await c.fetch("GET", f"/api/kernels/{k}", timeout=60)
            if r.status != 200:
                missing.append((r.status, r.body[:120]))
            await asyncio.sleep(0.05)

    async def watch_home() -> None:
        nonlocal moved_at
        while await home_of(ha, "kernel", k) == home:
            assert time.monotonic() < deadline, "nobody took the kernel over"
            await asyncio.sleep(0.1)
        moved_at = time.monotonic()
    await asyncio.gather(watch_home(), *(keep_listing(c) for c in live))
    assert not missing, f"{len(missing)} of {answers} rounds missed kernels: {missing[:5]}"
    assert answers > 10


async def test_culling_is_done_once_by_the_replica_that_took_the_kernel_over(ha: HA) -> None:
    """A v2 kernel with a short idle timeout; its replica killed: the replica that takes it over
    culls it, once, and no other replica does."""
    bob = ha.keys("bob-" + uuid.uuid4().hex[:6])
    out = run_py("bai-1.4.2", """
        import json
        from ai.backend.client.request import Request
        from ai.backend.client.session import Session
        with Session() as s:  # the SDK's create has no idle timeout: the API's own field
            resp = Request(s, 'POST', '/kernel/create', {'lang': 'python3', 'clientSessionToken': 'cull-me',
                                                         'config': {'idleTimeout': 8000}}).fetch()
            print(json.dumps(resp.json()))
    """, ha.url.rstrip("/"), bob)
    assert out["created"]
    client = Client(ha.url, ha.token)
    kernel = next(k for k in (await client.fetch("GET", "/api/kernels")).json)["id"]
    home = await home_of(ha, "kernel", kernel)
    ha.kill(home)
    deadline = time.monotonic() + 60
    while any(k["id"] == kernel for k in (await client.fetch("GET", "/api/kernels")).json):
        assert time.monotonic() < deadline, "the kernel was not culled"
        await asyncio.sleep(0.5)
    await asyncio.sleep(2)
    culled = [line for i in range(1, REPLICAS + 1)
              for line in open(f"{HA_DIR}/replica-{i}.log", errors="replace") if "Culling" in line and kernel in line]
    assert len(culled) == 1, culled


async def test_the_skaha_session_limit_holds_across_replicas(ha: HA) -> None:
    """Twice the headless-job limit asked at once through the balancer: the limit is made, the
    rest refused as by one gateway (403), whichever replicas the requests reached."""
    dana = ha.keys("dana-" + uuid.uuid4().hex[:6])
    client, headers = Client(ha.url, None), {"Authorization": f"Bearer {dana.token}"}
    q = "name=lim&image=images.canfar.net/skaha/terminal:1.1.1&cmd=sleep&args=600"
    answers = await asyncio.gather(*(client.fetch("POST", f"/skaha/v0/session?{q}", headers=headers, token=None)
                                     for _ in range(2 * HEADLESS)))
    made = [r.body.decode().strip() for r in answers if r.status == 200]
    try:
        assert len(made) == HEADLESS, [(r.status, r.body[:120]) for r in answers]
        assert all(r.status == 403 and b"maximum of 3 headless jobs" in r.body for r in answers if r.status != 200)
    finally:
        for sid in made:
            r = await client.fetch("DELETE", f"/skaha/v0/session/{sid}", headers=headers, token=None)
            assert r.status == 200, r.body


async def test_one_kernel_for_a_client_token_asked_of_every_replica_at_once(ha: HA) -> None:
    """v2 get-or-create with one client token, six times at once through the balancer (so on
    every replica): one kernel, and every caller gets it."""
    erin = ha.keys("erin-" + uuid.uuid4().hex[:6])
    client = Client(ha.url, erin.token)
    body = {"lang": "python3", "clientSessionToken": "same-tok"}
    answers = await asyncio.gather(*(client.fetch("POST", "/v2/kernel/create", body,
                                                  headers={"Content-Type": "application/json"})
                                     for _ in range(6)))
    assert all(r.status == 201 for r in answers), [(r.status, r.body[:120]) for r in answers]
    assert {r.json["kernelId"] for r in answers} == {"same-tok"}
    assert sum(r.json["created"] for r in answers) == 1
    mine = [k for k in (await client.fetch("GET", "/api/kernels")).json]
    assert len(mine) == 1, mine
    assert (await client.fetch("DELETE", f"/api/kernels/{mine[0]['id']}")).status == 204


async def test_the_web_page_shows_what_every_replica_serves(ha: HA) -> None:
    """The page signs in on one replica and lists (and pushes) kernels homed on the others: each
    replica answers its part for the same cookie (the cookie key comes from the shared master key)."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    keys = ha.keys(f"page-{uuid.uuid4().hex[:6]}")
    first = Client(ha.replica_url(1), token=None)
    signed = await first.fetch("POST", "/ui/api/signin", {"access_key": keys.access_key, "secret_key": keys.secret_key},
                               headers={"Content-Type": "application/json"})
    assert signed.status == 200, signed.body
    cookie = signed.headers["Set-Cookie"].split(";")[0]
    started = []
    for i in (2, 3):
        r = await Client(ha.replica_url(i), keys.token).fetch("POST", "/api/kernels", {"name": "python3"})
        assert r.status == 201, r.body
        started.append(r.json["id"])
    listed = await first.fetch("GET", "/ui/api/items", headers={"Cookie": cookie})
    assert {item["id"] for item in listed.json["items"]} == set(started)
    ws = await websocket_connect(HTTPRequest(ha.replica_url(1).replace("http://", "ws://").rstrip("/") + "/ui/api/live",
                                             headers={"Cookie": cookie}))
    try:
        deadline = time.monotonic() + 15
        seen: set[str] = set()
        while seen != set(started) and time.monotonic() < deadline:
            msg = json.loads(await asyncio.wait_for(ws.read_message(), 15))
            seen = {item["id"] for item in msg["items"]}
        assert seen == set(started), "the live list carries the other replicas' kernels"
    finally:
        ws.close()
    # A session's log, followed from the page on replica 1 while replica 3 runs it.
    made = await Client(ha.replica_url(3), keys.token).fetch(
        "POST", "/skaha/v0/session?name=far&image=images.canfar.net/skaha/terminal:1.1.1&type=headless&cmd=sh"
                "&args=-c%20echo${IFS}far-first;sleep${IFS}3;echo${IFS}far-second;sleep${IFS}60")
    assert made.status == 200, made.body
    sid = made.body.decode().strip()
    assert await home_of(ha, "skaha-session", sid) == "r3"
    ws = await websocket_connect(HTTPRequest(ha.replica_url(1).replace("http://", "ws://").rstrip("/") + "/ui/api/live",
                                             headers={"Cookie": cookie}))
    try:
        await asyncio.sleep(2)  # running by now
        await ws.write_message(json.dumps({"follow": sid}))
        log, deadline = "", time.monotonic() + 30
        while "far-second" not in log and time.monotonic() < deadline:
            msg = json.loads(await asyncio.wait_for(ws.read_message(), 30))
            if msg["type"] == "log" and msg["id"] == sid:
                log += msg["data"]
            assert msg["type"] != "log-end", msg
        assert log.split() == ["far-first", "far-second"], log
    finally:
        ws.close()
    await Client(ha.replica_url(1), keys.token).fetch("DELETE", f"/skaha/v0/session/{sid}")
    # The page's actions reach a kernel homed elsewhere (the dialect's route forwards them).
    me = (await first.fetch("GET", "/ui/api/me", headers={"Cookie": cookie})).json
    gone = await first.fetch("DELETE", f"/api/kernels/{started[0]}", headers={"Cookie": cookie, "X-KGE-CSRF": me["csrf"],
                                                                             "Origin": ha.replica_url(1).rstrip("/")})
    assert gone.status == 204, gone.body
