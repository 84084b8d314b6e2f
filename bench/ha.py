#!/usr/bin/env python3
"""Gateway replicas behind HAProxy with PostgreSQL vs one gateway with SQLite, same machine, one run.

    .venv/bin/python bench/ha.py [--seconds 8] [--concurrency 8] [--kernels 6] [--out bench/results/ha.json]

- executes/s and latency (p50, p99) of v2 REST executes (`POST /v2/kernel/<id>`, code `1`), with
  `--concurrency` callers over `--kernels` kernels: one gateway called directly (the reference),
  then 1, 2 and 3 replicas through the balancer (a call lands on any replica; one not serving the
  kernel forwards it to the one that does). Each replica's CPU use over the run is reported: this
  machine has 2 cores, shared by the replicas, the kernels, PostgreSQL and HAProxy.
- failover: the seconds from a SIGKILL of the replica serving a kernel to the kernel answering
  again through the balancer (median of `--failovers`).
- the store's share of request latency, one gateway each: `GET /api/kernels` with a key pair (its
  secret is looked up in the store on every request, never cached) minus the same with the gateway
  token (no store), SQLite vs PostgreSQL.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tornado.httpclient import AsyncHTTPClient, HTTPRequest  # noqa: E402

from bench.bench import write_results  # noqa: E402
from tests.ports import free_port  # noqa: E402

SCRIPT = ROOT / "scripts" / "ha-cluster"
HA_DIR = "/var/lib/kge-ha"
CLIENT = AsyncHTTPClient(max_clients=64)


def ha(*args: str, env: dict[str, str] | None = None) -> dict[str, str]:
    out = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, check=True, timeout=600,
                         env={**os.environ, **(env or {})}).stdout
    return dict(line.split("=", 1) for line in out.split() if "=" in line)


async def call(url: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    req = HTTPRequest(url.rstrip("/") + path, method=method, headers={"Authorization": f"token {token}",
                      "Content-Type": "application/json"},
                      body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
                      request_timeout=60)
    r = await CLIENT.fetch(req, raise_error=False)
    return r.code, r.body


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def executes(url: str, token: str, n_kernels: int, seconds: float, concurrency: int,
                   pids: dict[str, int]) -> dict[str, Any]:
    kernels = []
    for _ in range(n_kernels):
        code, body = await call(url, token, "POST", "/api/kernels", {"name": "python3"})
        assert code == 201, body
        kernels.append(json.loads(body)["id"])
    for k in kernels:  # warm
        await call(url, token, "POST", f"/v2/kernel/{k}", {"mode": "query", "code": "1"})
    times: list[float] = []
    errors = 0
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    began = time.perf_counter()
    deadline = began + seconds

    async def worker(i: int) -> None:
        nonlocal errors
        n = i
        while time.perf_counter() < deadline:
            k = kernels[n % len(kernels)]
            n += concurrency
            t0 = time.perf_counter()
            code, _ = await call(url, token, "POST", f"/v2/kernel/{k}", {"mode": "query", "code": "1"})
            if code == 200:
                times.append((time.perf_counter() - t0) * 1000)
            else:
                errors += 1
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall = time.perf_counter() - began
    cpu = {name: round((cpu_seconds(pid) - cpu0[name]) / wall * 100, 1) for name, pid in pids.items()}
    for k in kernels:
        await call(url, token, "DELETE", f"/api/kernels/{k}")
    s = sorted(times)
    return {"executes_per_s": round(len(times) / wall, 1), "p50_ms": round(statistics.median(s), 2),
            "p99_ms": round(s[int(0.99 * (len(s) - 1))], 2), "errors": errors, "cpu_percent": cpu}


async def failover(env: dict[str, str], rounds: int) -> list[float]:
    import asyncpg

    url, token = env["BALANCER_URL"], env["TOKEN"]
    out = []
    for _ in range(rounds):
        code, body = await call(url, token, "POST", "/api/kernels", {"name": "python3"})
        k = json.loads(body)["id"]
        conn = await asyncpg.connect(env["STORE_URL"])
        home = await conn.fetchval("SELECT home FROM records WHERE kind = 'kernel' AND id = $1", k)
        await conn.close()
        killed = time.perf_counter()
        os.kill(int(env[f"REPLICA_PID_{home[1:]}"]), signal.SIGKILL)
        while True:
            code, _ = await call(url, token, "POST", f"/v2/kernel/{k}", {"mode": "query", "code": "1"})
            if code == 200:
                break
            await asyncio.sleep(0.05)
        out.append(round(time.perf_counter() - killed, 2))
        await call(url, token, "DELETE", f"/api/kernels/{k}")
        subprocess.run([str(SCRIPT), "replica", home[1:]], check=True, capture_output=True, timeout=120)
        env.update(ha("env"))
    return out


def single_gateway(tmp: str, store_url: str = "") -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "KGE_STATE_DIR": tmp, "KGE_POOL_SIZES": "{}", "KGE_STORE_URL": store_url}
    if store_url:  # the HA cluster's database and master key (its key pairs are in that store)
        env["KGE_STATE_DIR"] = f"{HA_DIR}/state"
    proc = subprocess.Popen([sys.executable, "-m", "kernel_gateway_ext", f"--port={port}", "--auth-token=bench-token",
                             f"--gateway-id=bench-{port}", "--log-level=WARN"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if asyncio.run(call(url, "bench-token", "GET", "/api"))[0] == 200:
                return proc, url
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the gateway did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


async def latency(url: str, token: str, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        code, body = await call(url, token, "GET", "/api/kernels")
        assert code == 200, body
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def store_share(tmp: str, store_url: str, n: int) -> dict[str, float]:
    env = {**os.environ, "KGE_STATE_DIR": f"{HA_DIR}/state" if store_url else tmp, "KGE_STORE_URL": store_url}
    keys = json.loads(subprocess.run([sys.executable, "-m", "kernel_gateway_ext", "keys", "create", "--user=bench",
                                      "--json"], capture_output=True, text=True, check=True, env=env).stdout)
    pair = f"{keys['access_key']}:{keys['secret_key']}"
    proc, url = single_gateway(tmp, store_url)
    try:
        with_store = asyncio.run(latency(url, pair, n))
        without = asyncio.run(latency(url, "bench-token", n))
    finally:
        stop(proc)
    return {"keypair_request_ms": round(with_store, 3), "token_request_ms": round(without, 3),
            "store_ms": round(with_store - without, 3), "store_share": round((with_store - without) / with_store, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--kernels", type=int, default=6)
    ap.add_argument("--failovers", type=int, default=3)
    ap.add_argument("--latency-requests", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ha.json"))
    args = ap.parse_args()
    results: dict[str, Any] = {"machine_cores": os.cpu_count()}
    tmp = tempfile.mkdtemp(prefix="kge-bench-ha-")
    print("bench: one gateway (SQLite), called directly", file=sys.stderr)
    proc, url = single_gateway(tmp)
    try:
        results["one_gateway_direct"] = asyncio.run(executes(url, "bench-token", args.kernels, args.seconds,
                                                             args.concurrency, {"gateway": proc.pid}))
    finally:
        stop(proc)
    subprocess.run([str(SCRIPT), "down"], check=True)
    try:
        for n in (1, 2, 3):
            print(f"bench: {n} replica(s) behind HAProxy (PostgreSQL)", file=sys.stderr)
            subprocess.run([str(SCRIPT), "down"], check=True)
            env = ha("up", str(n), env={"KGE_POOL_SIZES": "{}"})
            pids = {f"r{i}": int(env[f"REPLICA_PID_{i}"]) for i in range(1, n + 1)}
            results[f"replicas_{n}"] = asyncio.run(executes(env["BALANCER_URL"], env["TOKEN"], args.kernels,
                                                            args.seconds, args.concurrency, pids))
        print("bench: failover after SIGKILL (3 replicas)", file=sys.stderr)
        results["failover_s"] = asyncio.run(failover(env, args.failovers))
        print("bench: the store's share of a request's latency", file=sys.stderr)
        results["store_sqlite"] = store_share(tmp, "", args.latency_requests)
        results["store_postgresql"] = store_share(tmp, env["STORE_URL"], args.latency_requests)
    finally:
        subprocess.run([str(SCRIPT), "down"], check=True)
    write_results(results, args.out)
    print(f"\n{'':34} {'executes/s':>11} {'p50 ms':>8} {'p99 ms':>8}  CPU % per process", file=sys.stderr)
    for name in ("one_gateway_direct", "replicas_1", "replicas_2", "replicas_3"):
        r = results[name]
        print(f"{name:34} {r['executes_per_s']:>11} {r['p50_ms']:>8} {r['p99_ms']:>8}  {r['cpu_percent']}",
              file=sys.stderr)
    print(f"failover after SIGKILL: {results['failover_s']} s (reference: one gateway, no failover)", file=sys.stderr)
    for name in ("store_sqlite", "store_postgresql"):
        r = results[name]
        print(f"{name}: key-pair request {r['keypair_request_ms']} ms, token request {r['token_request_ms']} ms, "
              f"store {r['store_ms']} ms ({r['store_share'] * 100:.0f}%)", file=sys.stderr)


if __name__ == "__main__":
    main()
