#!/usr/bin/env python3
"""Load and churn, ours and Jupyter Kernel Gateway 3.0.1 side by side in one run.

    .venv/bin/python bench/load.py [--clients 100] [--kernels 10] [--seconds 60] [--cycles 500]

load:  --clients websocket clients spread over --kernels kernels, each executing code in a loop for
       --seconds; every execute must end in an ok execute_reply and idle. Prints executes, errors,
       p50/p99 latency (ms).
churn: --cycles create -> execute -> delete cycles (4 at a time); afterwards nothing may remain:
       containers, store records, connection files (ours); kernel processes and connection files
       (the reference).
The test suite runs the same functions at a size that fits CI (tests/api/test_load_churn.py).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tornado.httpclient import AsyncHTTPClient, HTTPRequest  # noqa: E402

from tests.wsclient import KernelWS  # noqa: E402

CODE = "s = sum(i * i for i in range(2000)); print(s)"


async def call(url: str, token: str, method: str, path: str, body: Any = None) -> Any:
    req = HTTPRequest(url.rstrip("/") + path, method=method, headers={"Authorization": f"token {token}"},
                      body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
                      request_timeout=120)
    resp = await AsyncHTTPClient().fetch(req, raise_error=False)
    if resp.code >= 400:
        raise RuntimeError(f"{method} {path}: {resp.code} {resp.body[:200]!r}")
    return json.loads(resp.body) if resp.body else None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def load(url: str, token: str, *, clients: int, kernels: int, seconds: float) -> dict[str, Any]:
    """`clients` websockets over `kernels` kernels, executing for `seconds`."""
    AsyncHTTPClient.configure(None, max_clients=max(64, clients))
    ids = [k["id"] for k in await asyncio.gather(*(call(url, token, "POST", "/api/kernels", {"name": "python3"})
                                                   for _ in range(kernels)))]
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    async def client(n: int) -> None:
        try:
            ws = await KernelWS.connect(url, ids[n % kernels], token, scheme="token")
        except Exception as e:  # noqa: BLE001 - counted, reported
            errors.append(f"connect: {type(e).__name__}: {e}")
            return
        try:
            while time.monotonic() < deadline:
                began = time.perf_counter()
                try:
                    r = await ws.execute(CODE, timeout=120)
                except Exception as e:  # noqa: BLE001 - counted, reported
                    errors.append(f"{type(e).__name__}: {e}")
                    return
                if r["reply"]["status"] != "ok" or ws.stdout(r).strip() != str(sum(i * i for i in range(2000))):
                    errors.append(f"bad reply {r['reply'].get('status')}")
                latencies.append((time.perf_counter() - began) * 1000)
                ws.inbox.clear()  # other clients' output on the shared kernel
        finally:
            ws.close()

    began = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(clients)))
    wall = time.monotonic() - began
    await asyncio.gather(*(call(url, token, "DELETE", f"/api/kernels/{k}") for k in ids))
    return {"clients": clients, "kernels": kernels, "seconds": round(wall, 1), "executes": len(latencies),
            "errors": len(errors), "error_samples": errors[:5], "executes_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(percentile(latencies, 0.50), 1), "p99_ms": round(percentile(latencies, 0.99), 1),
            "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None}


async def churn(url: str, token: str, *, cycles: int, concurrency: int = 4) -> dict[str, Any]:
    """`cycles` create -> execute -> delete cycles; returns counts and failures."""
    failures: list[str] = []
    durations: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def cycle(n: int) -> None:
        async with sem:
            t0 = time.monotonic()
            try:
                kid = (await call(url, token, "POST", "/api/kernels", {"name": "python3"}))["id"]
                try:
                    if n % 10 == 0:  # every tenth also runs code over a websocket
                        ws = await KernelWS.connect(url, kid, token, scheme="token")
                        await ws.execute("x = 1")
                        ws.close()
                finally:
                    await call(url, token, "DELETE", f"/api/kernels/{kid}")
                durations.append(time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001 - counted, reported
                failures.append(f"{type(e).__name__}: {e}")

    began = time.monotonic()
    await asyncio.gather(*(cycle(n) for n in range(cycles)))
    listed = await call(url, token, "GET", "/api/kernels")
    return {"cycles": cycles, "failures": len(failures), "failure_samples": failures[:5],
            "seconds": round(time.monotonic() - began, 1), "kernels_listed_after": len(listed),
            "cycle_median_s": round(statistics.median(durations), 3) if durations else None}


def leftovers_ours(gateway_id: str, state_dir: str) -> dict[str, int]:
    """What a churn may have left of ours: containers, store records, connection files."""
    import docker

    every = docker.from_env().containers.list(all=True, filters={"label": f"org.kge.gateway={gateway_id}"})
    # A warm pool's ready kernels (no owner yet) are the pool's, not a churn's leftovers.
    containers = [c for c in every if c.labels.get("org.kge.owner")]
    with sqlite3.connect(os.path.join(state_dir, "state.db")) as db:
        records = db.execute("SELECT COUNT(*) FROM records WHERE gateway = ?", (gateway_id,)).fetchone()[0]
    # Wherever a connection file could land: the gateway's private runtime folder, or the working
    # directory (jupyter_client's default, where leaked files once went).
    files = sum(len(list(Path(d).glob("kernel-*.json"))) for d in (os.path.join(state_dir, "runtime"), os.getcwd()))
    return {"containers": len(containers), "store_records": records, "connection_files": files,
            "pool_containers": len(every) - len(containers)}


def leftovers_reference(pid: int) -> dict[str, int]:
    """Kernel processes the reference gateway still has as children."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return {"kernel_processes": len(children.read_text().split()) if children.exists() else 0}


async def main() -> None:
    from bench.bench import TOKEN, Target, reference_target

    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--kernels", type=int, default=10)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--cycles", type=int, default=500)
    p.add_argument("--pool", type=int, default=0, help="ours keeps this many ready python3 kernels (0: none)")
    p.add_argument("--no-load", action="store_true", help="churn only")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "load.json"))
    args = p.parse_args()

    import tempfile
    import uuid

    state_dir = tempfile.mkdtemp(prefix="kge-load-state-")
    gateway_id = "kge-load-" + uuid.uuid4().hex[:6]
    ours = Target("kernel_gateway_ext", [sys.executable, "-m", "kernel_gateway_ext", "--port={port}",
                                         f"--auth-token={TOKEN}", f"--gateway-id={gateway_id}", "--log-level=WARN",
                                         *(["--GatewayKernelManager.pool_sizes", f"python3={args.pool}"] if args.pool else [])],
                  env={"KGE_STATE_DIR": state_dir})
    ref = reference_target()
    results: dict[str, Any] = {"machine": {"cores": os.cpu_count()}, "args": vars(args)}
    for target in (ours, ref):
        await target.start()
        try:
            print(f"load: {target.name}: {args.clients} clients on {args.kernels} kernels for {args.seconds:g} s",
                  file=sys.stderr)
            r_load = ({"executes": 0, "errors": 0, "executes_per_s": 0, "p50_ms": 0, "p99_ms": 0} if args.no_load else
                      await load(target.url, TOKEN, clients=args.clients, kernels=args.kernels, seconds=args.seconds))
            print(f"churn: {target.name}: {args.cycles} cycles", file=sys.stderr)
            print(json.dumps({target.name: {"load": r_load}}), file=sys.stderr)
            r_churn = await churn(target.url, TOKEN, cycles=args.cycles)
            await asyncio.sleep(1.0)
            r_churn["left"] = (leftovers_ours(gateway_id, state_dir) if target is ours
                               else leftovers_reference(target.proc.pid))  # type: ignore[union-attr]
            results[target.name] = {"load": r_load, "churn": r_churn}
            print(json.dumps({target.name: results[target.name]}), file=sys.stderr)
        finally:
            target.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    a, b = results[ours.name]["load"], results[ref.name]["load"]
    print(f"\n{'measure':<22}{'ours':>12}{'KG 3.0.1':>12}")
    for key in ("executes", "errors", "executes_per_s", "p50_ms", "p99_ms"):
        print(f"{key:<22}{a[key]!s:>12}{b[key]!s:>12}")
    ca, cb = results[ours.name]["churn"], results[ref.name]["churn"]
    print(f"{'churn failures':<22}{ca['failures']!s:>12}{cb['failures']!s:>12}")
    print(f"{'churn seconds':<22}{ca['seconds']!s:>12}{cb['seconds']!s:>12}")
    print(f"{'cycle median s':<22}{ca['cycle_median_s']!s:>12}{cb['cycle_median_s']!s:>12}")
    print(f"{'left after churn':<22}{json.dumps(ca['left'])}  |  {json.dumps(cb['left'])}")


if __name__ == "__main__":
    asyncio.run(main())
