#!/usr/bin/env python3
"""Our gateway on a 3-node Docker Swarm cluster vs on the single local engine, same machine, one run.

    .venv/bin/python bench/cluster.py [--rounds 10] [--kernels 60] [--batch 10] [--out bench/results/cluster.json]

The cluster is made by scripts/swarm-cluster (up 3 at the start, unless one is up; down at the
end when this bench made it; both timed). For each backend:
- start -> first execute reply, cold (no pool) and pooled (a pool of 2, refilled between starts);
- `--kernels` kernels started `--batch` at a time: wall time, and how they spread over nodes;
- execute round trip on a running kernel (on the cluster: a kernel on another node than the
  gateway's, through its node's kernel subnet);
- the cluster alone: the time from a node's link being cut to its kernel being reported dead
  (the websocket's `restarting`), and to the kernel answering again on a live node.
All nodes share this machine's cores, so the cluster's figures measure the backend's overhead,
not more capacity.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench import (TOKEN, Target, start_to_reply, summary, wait_pool_full, warm_execute,  # noqa: E402
                         write_results)

SCRIPT = ROOT / "scripts" / "swarm-cluster"
PY = sys.executable
TOKEN_ARGS = [f"--auth-token={TOKEN}", "--port={port}", "--log-level=WARN"]


def ms(values: list[float]) -> dict[str, float]:
    return {k: (v if k == "n" else round(v * 1000, 1)) for k, v in summary(values).items()}


def gateway(name: str, env: dict[str, str], pool: int) -> Target:
    state = f"/tmp/kge-bench-cluster-{name}-{os.getpid()}"
    return Target(name, [PY, "-m", "kernel_gateway_ext", *TOKEN_ARGS, f"--gateway-id=kge-bench-{name}-{os.getpid()}"],
                  env={**env, "KGE_STATE_DIR": state,
                       # 60 kernels within one host's memory budget and one owner's count
                       "KGE_KERNEL_MEM_LIMIT": "512m", "KGE_MAX_KERNELS_PER_OWNER": "0",
                       "KGE_POOL_SIZES": json.dumps({"python3": pool} if pool else {}),
                       "KGE_POOL_MAX_SIZES": json.dumps({"python3": pool} if pool else {})})


async def model(t: Target, kid: str) -> dict[str, Any]:
    return json.loads((await t.fetch("GET", f"/api/kernels/{kid}")).body)


async def batches(t: Target, n: int, batch: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    kids: list[str] = []
    try:
        for _ in range(0, n, batch):
            started = await asyncio.gather(*(t.start_kernel() for _ in range(batch)), return_exceptions=True)
            kids += [k for k in started if isinstance(k, str)]
            failed = next((e for e in started if isinstance(e, BaseException)), None)
            if failed is not None:
                raise failed
        wall = time.perf_counter() - t0
        spread = Counter([(await model(t, k)).get("node", "?") for k in kids])
    finally:
        # Every kernel started goes, also after a failed start: a gateway stopped with dozens of
        # kernels can outlast Target.stop's wait, be killed, and leave their containers behind.
        await asyncio.gather(*(t.delete(k) for k in kids))
    return {"wall_s": round(wall, 2), "per_node": dict(sorted(spread.items()))}


async def node_loss(t: Target) -> dict[str, Any]:
    kid = await t.start_kernel()
    node = (await model(t, kid))["node"]
    ws = await t.ws(kid)
    await ws.execute("1")
    cut = time.perf_counter()
    subprocess.run(["ip", "link", "set", f"{node}-h", "down"], check=True)
    try:
        state = ""
        while state != "restarting":
            msg = await ws.recv(timeout=60)
            if msg["msg_type"] == "status":
                state = msg["content"]["execution_state"]
        dead_after = time.perf_counter() - cut
        await ws.execute("1", timeout=120)
        answers_after = time.perf_counter() - cut
        moved_to = (await model(t, kid))["node"]
    finally:
        subprocess.run(["ip", "link", "set", f"{node}-h", "up"], check=True)
        ws.close()
    await t.delete(kid)
    return {"node": node, "reported_dead_s": round(dead_after, 2), "answers_again_s": round(answers_after, 2),
            "moved_to": moved_to}


async def measure(name: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    cold = gateway(name, env, 0)
    try:
        await cold.start()
        await start_to_reply(cold, 2)  # warm the images' page cache and the engines
        res["cold_start_to_first_reply_ms"] = ms(await start_to_reply(cold, args.rounds))
        res[f"kernels_{args.kernels}_in_batches_of_{args.batch}"] = await batches(cold, args.kernels, args.batch)
        # On the cluster every kernel runs on another node than the gateway (the manager is drained).
        res["execute_round_trip_ms"] = {k: (v if k == "n" else round(v, 2))
                                        for k, v in summary(await warm_execute(cold, 200)).items()}
        if name == "cluster":
            res["node_loss"] = await node_loss(cold)
    finally:
        cold.stop()
    pooled = gateway(name + "-pool", env, 2)
    try:
        await pooled.start()
        await wait_pool_full(pooled)
        times = await start_to_reply(pooled, args.rounds, between=lambda: wait_pool_full(pooled))
        res["pooled_start_to_first_reply_ms"] = ms(times)
    finally:
        pooled.stop()
    return res


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--kernels", type=int, default=60)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "cluster.json"))
    args = p.parse_args()
    made = subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True).stdout.count("kge-n") == 0
    t0 = time.perf_counter()
    up = subprocess.run([str(SCRIPT), "up", str(args.nodes)], capture_output=True, text=True, check=True,
                        env={**os.environ, "KGE_SWARM_IMAGES": "kge-kernel:latest"})
    up_s = time.perf_counter() - t0
    cluster_env = dict(line.split("=", 1) for line in up.stdout.split() if "=" in line)
    results: dict[str, Any] = {"nodes": args.nodes, "cluster_up_s": round(up_s, 1)}
    try:
        results["single_engine"] = await measure("single", {}, args)
        results["cluster"] = await measure("cluster", cluster_env, args)
    finally:
        if made:
            t0 = time.perf_counter()
            subprocess.run([str(SCRIPT), "down"], check=True, capture_output=True)
            results["cluster_down_s"] = round(time.perf_counter() - t0, 1)
    write_results(results, args.out)


if __name__ == "__main__":
    asyncio.run(main())
