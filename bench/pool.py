#!/usr/bin/env python3
"""The warm pool under a mixed workload, side by side with Jupyter Kernel Gateway 3.0.1 in one run.

    .venv/bin/python bench/pool.py [--starts 60] [--interval 0.5] [--pool 4] [--out bench/results/pool.json]

Ours: a gateway with a warm pool of python3 kernels; `--starts` starts, one every `--interval`
seconds, each a quarter of the time of one kind: defaults (Jupyter REST + websocket), custom
limits, a mounted folder with an alias, and env (Backend.AI v2 create + execute). Each start is
timed from the request to its first execute reply, then the kernel is deleted. Reported: the share
served warm (the gateway's own start counters), start -> first reply median / p99 per kind and in
all, pooled starts alone, and how long a v2 destroy took (its answer carries the kernel's usage).
The reference runs the same cadence of plain starts (it has no limits, folders or pools for them),
measured the same way. Our pool's size: `--pool`, or with `--auto` the pool sizes itself from the
start rate (from 2, --pool is then its ceiling).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scale import loop_lag_max  # noqa: E402
from bench.bench import TOKEN, Target, reference_target, write_results, start_to_reply  # noqa: E402

KINDS = ("defaults", "limits", "mounts", "env")
AUTO_FLOOR = 2  # with --auto: the pool's least size (scripts/start-gateway's)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else 0.0


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"median": round(percentile(values, 0.5) * 1000, 1), "p99": round(percentile(values, 0.99) * 1000, 1),
            "max": round(max(values) * 1000, 1) if values else 0.0, "n": len(values)}


async def starts_by_source(t: Target) -> dict[str, float]:
    body = (await t.fetch("GET", "/metrics")).body.decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^kge_kernel_starts_total\{[^}]*source="(\w+)"[^}]*\} ([0-9.e+]+)$', body, re.M):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


async def docker_calls(t: Target) -> dict[str, tuple[float, float]]:
    """The gateway's Docker calls so far, by method: (count, seconds in all)."""
    body = (await t.fetch("GET", "/metrics")).body.decode()
    out: dict[str, list[float]] = {}
    for m in re.finditer(r'^kge_docker_call_seconds_(count|sum)\{method="(\w+)"\} ([0-9.e+]+)$', body, re.M):
        out.setdefault(m.group(2), [0.0, 0.0])[m.group(1) == "sum"] = float(m.group(3))
    return {k: (v[0], v[1]) for k, v in out.items()}


V2_DELETES: list[float] = []  # seconds each v2 destroy took (it answers with the kernel's usage figures)


async def v2_start(t: Target, config: dict[str, Any]) -> float:
    token = "bench-" + uuid.uuid4().hex[:12]
    t0 = time.perf_counter()
    await t.fetch("POST", "/v2/kernel/create", {"lang": "python3", "clientSessionToken": token, "config": config})
    r = await t.fetch("POST", f"/v2/kernel/{token}", {"mode": "query", "code": "1", "runId": uuid.uuid4().hex[:8]})
    took = time.perf_counter() - t0
    assert json.loads(r.body)["result"]["status"] == "finished", r.body
    t0 = time.perf_counter()
    d = await t.fetch("DELETE", f"/v2/kernel/{token}")
    V2_DELETES.append(time.perf_counter() - t0)
    assert "stats" in json.loads(d.body), d.body  # the usage figures Backend.AI clients print
    return took


async def one_start(t: Target, kind: str) -> float:
    if kind == "defaults":
        return (await start_to_reply(t, 1))[0]
    if kind == "limits":
        return await v2_start(t, {"instanceMemory": 768, "instanceCores": 0.5})
    if kind == "mounts":
        return await v2_start(t, {"mounts": ["bench-data", "bench-data:.cache/alias"]})
    return await v2_start(t, {"envs": {"BENCH_VAR": "x", "OMP_NUM_THREADS": "1"}})


async def workload(t: Target, args: argparse.Namespace, kinds: tuple[str, ...]) -> dict[str, list[float]]:
    """`args.starts` starts, one every `args.interval` s (overlapping when a start is slower)."""
    times: dict[str, list[float]] = {k: [] for k in kinds}

    async def timed(kind: str) -> None:
        times[kind].append(await one_start(t, kind))

    tasks = []
    for i in range(args.starts):
        tasks.append(asyncio.ensure_future(timed(kinds[i % len(kinds)])))
        await asyncio.sleep(args.interval)
    await asyncio.gather(*tasks)
    return times


async def wait_ready(t: Target, ready: int, timeout: float = 180) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        pools = json.loads((await t.fetch("GET", "/api")).body).get("pools", {})
        if sum(p["ready"] for p in pools.values()) >= ready:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the pool did not fill")


async def measure_ours(t: Target, args: argparse.Namespace) -> dict[str, Any]:
    await t.fetch("POST", "/v2/folders", {"name": "bench-data"})
    await wait_ready(t, AUTO_FLOOR if args.auto else args.pool)
    before, calls_before = await starts_by_source(t), await docker_calls(t)
    times = await workload(t, args, KINDS)
    after, calls_after = await starts_by_source(t), await docker_calls(t)
    calls = {}  # where the engine's share of the starts went: each call's count and mean
    for method, (n, total) in calls_after.items():
        n0, total0 = calls_before.get(method, (0.0, 0.0))
        if n > n0:
            calls[method] = {"n": int(n - n0), "mean_ms": round((total - total0) / (n - n0) * 1000, 1)}
    pooled = after.get("pooled", 0) - before.get("pooled", 0)
    cold = after.get("cold", 0) - before.get("cold", 0)
    every = [x for v in times.values() for x in v]
    await t.fetch("DELETE", "/v2/folders/bench-data")
    return {"served_warm": f"{int(pooled)}/{int(pooled + cold)}",
            "served_warm_share": round(pooled / max(1, pooled + cold), 3),
            "start_to_first_reply_ms": summary_ms(every),
            "by_kind_ms": {k: summary_ms(v) for k, v in times.items()},
            "v2_destroy_ms": summary_ms(V2_DELETES),
            "docker_calls_during_the_workload": calls,
            "event_loop_worst_lag_last_minute_ms": round(await loop_lag_max(t) * 1000, 1)}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--starts", type=int, default=60)
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--pool", type=int, default=4)
    p.add_argument("--auto", action="store_true", help="let the pool size itself (--pool is its ceiling)")
    p.add_argument("--ours-only", action="store_true", help="skip the reference (quick runs)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "pool.json"))
    args = p.parse_args()
    pool_args = (["--GatewayKernelManager.pool_sizes", f"python3={AUTO_FLOOR}",
                  "--GatewayKernelManager.pool_max_sizes", f"python3={args.pool}"] if args.auto
                 else ["--GatewayKernelManager.pool_sizes", f"python3={args.pool}"])
    ours = Target("kernel_gateway_ext (pool)", [sys.executable, "-m", "kernel_gateway_ext", "--port={port}",
                                                f"--auth-token={TOKEN}", f"--gateway-id=kge-bench-{uuid.uuid4().hex[:6]}",
                                                "--log-level=WARN", *pool_args],
                  env={"KGE_STATE_DIR": tempfile.mkdtemp(prefix="kge-bench-pool-")})  # its own folders
    ref = reference_target()
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "workload": {"starts": args.starts, "interval_s": args.interval, "pool": args.pool,
                                            "auto": args.auto, "kinds": list(KINDS)}}
    for target in (ours,) if args.ours_only else (ours, ref):
        print(f"bench: {target.name}: {args.starts} starts, one every {args.interval} s", file=sys.stderr)
        await target.start()
        try:
            if target is ours:
                results[target.name] = await measure_ours(target, args)
            else:
                times = await workload(target, args, ("defaults",))
                results[target.name] = {"start_to_first_reply_ms": summary_ms(times["defaults"])}
        finally:
            target.stop()
    if not args.ours_only:
        a = results[ours.name]["start_to_first_reply_ms"]
        b = results[ref.name]["start_to_first_reply_ms"]
        results["ratio_ours_over_reference"] = {k: round(a[k] / b[k], 3) for k in ("median", "p99") if b[k]}
    write_results(results, args.out)


if __name__ == "__main__":
    asyncio.run(main())
