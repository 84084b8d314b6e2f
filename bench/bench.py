#!/usr/bin/env python3
"""Benchmark kernel_gateway_ext side by side with Jupyter Kernel Gateway 3.0.1 (local kernels), in
one run, with the same client code against both. Prints JSON and ours/reference ratios.

    .venv/bin/python bench/bench.py [--kernels 20] [--rounds 9] [--out bench/results/latest.json]

Measures: start -> first execute_reply (cold, and served by a warm pool), warm execute round trip,
GET /api/kernels requests/s with 0 and N kernels running (and GET /api latency: an event loop blocked
by Docker calls shows there), restart -> reply on the same websocket (and whether it survives), N
concurrent starts (and the machine's CPU seconds per start over them), memory per kernel. The
reference runs in its own venv (bench/.venv-kg, made on first use).
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
import time
import uuid
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
from tornado.httpclient import AsyncHTTPClient, HTTPRequest  # noqa: E402

from tests.ports import free_port  # noqa: E402
from tests.wsclient import KernelWS  # noqa: E402

TOKEN = "bench-" + uuid.uuid4().hex[:8]
KG_VENV = ROOT / "bench" / ".venv-kg"


def ensure_kg() -> Path:
    exe = KG_VENV / "bin" / "jupyter-kernelgateway"
    if not exe.exists():
        print("bench: installing jupyter_kernel_gateway==3.0.1 into bench/.venv-kg", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(KG_VENV)], check=True)
        subprocess.run([str(KG_VENV / "bin" / "pip"), "install", "-q", "jupyter_kernel_gateway==3.0.1", "ipykernel"],
                       check=True, stderr=subprocess.DEVNULL)
    return exe


def reference_target() -> "Target":
    """Jupyter Kernel Gateway 3.0.1 with local kernels, listing them as ours does."""
    return Target("jupyter-kernel-gateway-3.0.1", [str(ensure_kg()), "--KernelGatewayApp.port={port}",
                                                   f"--KernelGatewayApp.auth_token={TOKEN}",
                                                   "--JupyterWebsocketPersonality.list_kernels=True",
                                                   "--KernelGatewayApp.log_level=WARN"])


def write_results(results: dict[str, Any], out: str) -> None:
    """Print the JSON and keep it in `out`."""
    text = json.dumps(results, indent=2)
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text + "\n")


class Target:
    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        # BENCH_LOG_DIR=DIR keeps each gateway's output (DIR/NAME.log) to find out why something failed.
        log_dir = os.environ.get("BENCH_LOG_DIR")
        out: Any = subprocess.DEVNULL
        if log_dir:
            out = open(os.path.join(log_dir, self.name.replace(" ", "_") + ".log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=out)
        if log_dir:
            out.close()  # the child has its own copy
        for _ in range(300):
            r = await self.fetch("GET", "/api", raise_error=False)
            if r is not None and r.code == 200:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    async def fetch(self, method: str, path: str, body: Any = None, raise_error: bool = True) -> Any:
        headers = {"Authorization": f"token {TOKEN}", "Content-Type": "application/json"}
        req = HTTPRequest(self.url + path, method=method, headers=headers,
                          body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
                          request_timeout=120)
        try:
            return await AsyncHTTPClient(max_clients=64).fetch(req, raise_error=raise_error)
        except ConnectionError:
            if raise_error:
                raise
            return None

    async def start_kernel(self) -> str:
        r = await self.fetch("POST", "/api/kernels", {"name": "python3"})
        return json.loads(r.body)["id"]

    async def delete(self, kid: str) -> None:
        await self.fetch("DELETE", f"/api/kernels/{kid}")

    async def ws(self, kid: str) -> KernelWS:
        return await KernelWS.connect(self.url, kid, TOKEN, scheme="token")  # the reference knows no Bearer


async def start_to_reply(t: Target, rounds: int, between: Any = None) -> list[float]:
    """Start -> first execute_reply, one kernel at a time; `between()` is awaited after each."""
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        kid = await t.start_kernel()
        ws = await t.ws(kid)
        await ws.execute("1")
        out.append(time.perf_counter() - t0)
        ws.close()
        await t.delete(kid)
        if between is not None:
            await between()
    return out


async def warm_execute(t: Target, n: int) -> list[float]:
    kid = await t.start_kernel()
    ws = await t.ws(kid)
    for _ in range(10):
        await ws.execute("1")
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await ws.execute("1")
        out.append((time.perf_counter() - t0) * 1000)
    ws.close()
    await t.delete(kid)
    return out


async def restart_reply(t: Target, rounds: int) -> tuple[list[float], int]:
    kid = await t.start_kernel()
    ws = await t.ws(kid)
    await ws.execute("1")
    times, survived = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        await t.fetch("POST", f"/api/kernels/{kid}/restart", {})
        try:
            await ws.execute("1", timeout=15)
            times.append(time.perf_counter() - t0)
            survived += 1
        except Exception:  # noqa: BLE001 - a dead websocket is the finding
            ws.close()
            ws = await t.ws(kid)
            await ws.execute("1")
            times.append(time.perf_counter() - t0)
    ws.close()
    await t.delete(kid)
    return times, survived


async def start_and_answer(t: Target) -> str:
    """A start counts when the kernel answered an execute: a gateway that answers the POST
    before its kernel is ready (the reference does) gets no credit for that."""
    kid = await t.start_kernel()
    ws = await t.ws(kid)
    await ws.execute("1", timeout=120)
    ws.close()
    return kid


async def requests_per_second(t: Target, path: str, seconds: float = 3.0, concurrency: int = 8) -> float:
    count = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await t.fetch("GET", path)
            count += 1

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return count / seconds


async def latency(t: Target, path: str, n: int = 200) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await t.fetch("GET", path)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def memory_per_kernel_mb(t: Target, gateway_id: str | None) -> float:
    if gateway_id is not None:  # ours: the containers' own accounting, page cache excluded
        client = docker.from_env()
        usages = []
        for c in client.containers.list(filters={"label": f"org.kge.gateway={gateway_id}"}):
            mem = c.stats(stream=False)["memory_stats"]
            usages.append(mem.get("usage", 0) - (mem.get("stats") or {}).get("cache", 0))
        return statistics.mean(usages) / 2**20 if usages else 0.0
    assert t.proc is not None  # reference: RSS of its kernel processes
    rss = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read().split()
            if int(stat[3]) != t.proc.pid:
                continue
            rss.append(int(open(f"/proc/{pid}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
        except OSError:
            continue
    return statistics.mean(rss) / 2**20 if rss else 0.0


def machine_cpu_s() -> float:
    """CPU seconds every process of the machine has used so far (not idle, not waiting on I/O): a
    burst's cost, engine and kernels included, as a difference of two readings."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def summary(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {"median": round(statistics.median(s), 4), "p90": round(s[int(0.9 * (len(s) - 1))], 4),
            "min": round(s[0], 4), "max": round(s[-1], 4), "n": len(s)}


async def measure(t: Target, args: argparse.Namespace, gateway_id: str | None) -> dict[str, Any]:
    res: dict[str, Any] = {}
    print(f"bench: {t.name}: start -> first reply", file=sys.stderr)
    res["start_to_first_reply_s"] = summary(await start_to_reply(t, args.rounds))
    print(f"bench: {t.name}: warm execute", file=sys.stderr)
    res["warm_execute_ms"] = summary(await warm_execute(t, args.executes))
    print(f"bench: {t.name}: restart", file=sys.stderr)
    times, survived = await restart_reply(t, args.rounds)
    res["restart_to_reply_s"] = summary(times)
    res["restart_websocket_survived"] = f"{survived}/{args.rounds}"
    res["api_kernels_rps_0"] = round(await requests_per_second(t, "/api/kernels"), 1)
    res["api_latency_ms_0"] = summary(await latency(t, "/api"))
    print(f"bench: {t.name}: {args.kernels} concurrent starts", file=sys.stderr)


    t0, cpu0 = time.perf_counter(), machine_cpu_s()
    kids = await asyncio.gather(*(start_and_answer(t) for _ in range(args.kernels)))
    res[f"concurrent_starts_{args.kernels}_to_reply_s"] = round(time.perf_counter() - t0, 3)
    # What bounds the burst on a small machine: the CPU each start costs, the engine's included.
    res["machine_cpu_s_per_concurrent_start"] = round((machine_cpu_s() - cpu0) / args.kernels, 3)
    await asyncio.sleep(1.0)
    res[f"api_kernels_rps_{args.kernels}"] = round(await requests_per_second(t, "/api/kernels"), 1)
    res[f"api_latency_ms_{args.kernels}"] = summary(await latency(t, "/api"))
    res["memory_per_kernel_mb"] = round(memory_per_kernel_mb(t, gateway_id), 1)
    await asyncio.gather(*(t.delete(k) for k in kids))
    return res


async def wait_pool_full(t: Target, timeout: float = 180) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        pools = json.loads((await t.fetch("GET", "/api")).body).get("pools", {})
        if pools and all(p["ready"] >= p["size"] for p in pools.values()):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the pool did not fill")


async def measure_pooled(t: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Starts served by the warm pool: one at a time (refilled between), then N at once."""
    res: dict[str, Any] = {}
    await wait_pool_full(t)
    times = await start_to_reply(t, args.rounds, between=lambda: wait_pool_full(t))
    res["pooled_start_to_first_reply_s"] = summary(times)


    t0 = time.perf_counter()
    kids = await asyncio.gather(*(start_and_answer(t) for _ in range(args.kernels)))
    res[f"pooled_concurrent_starts_{args.kernels}_to_reply_s"] = round(time.perf_counter() - t0, 3)
    await asyncio.gather(*(t.delete(k) for k in kids))
    return res


async def measure_cold_starts(t: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Cold starts only: one at a time, then N at once (and the machine's CPU each cost)."""
    res: dict[str, Any] = {"start_to_first_reply_s": summary(await start_to_reply(t, args.rounds))}
    t0, cpu0 = time.perf_counter(), machine_cpu_s()
    kids = await asyncio.gather(*(start_and_answer(t) for _ in range(args.kernels)))
    res[f"concurrent_starts_{args.kernels}_to_reply_s"] = round(time.perf_counter() - t0, 3)
    res["machine_cpu_s_per_concurrent_start"] = round((machine_cpu_s() - cpu0) / args.kernels, 3)
    await asyncio.gather(*(t.delete(k) for k in kids))
    return res


def our_target(name: str, gateway_id: str, *argv: str, env: dict[str, str] | None = None) -> Target:
    return Target(name, [sys.executable, "-m", "kernel_gateway_ext", "--port={port}", f"--auth-token={TOKEN}",
                         f"--gateway-id={gateway_id}", "--log-level=WARN", *argv], env=env)


async def run_on(target: Target, measure_it: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Start `target`, measure it, stop it."""
    await target.start()
    try:
        print(f"bench: {target.name}", file=sys.stderr)
        return await measure_it()
    finally:
        target.stop()


def ratio(ours: Any, ref: Any) -> Any:
    if isinstance(ours, dict) and isinstance(ref, dict):
        return round(ours["median"] / ref["median"], 3) if ref.get("median") else None
    if isinstance(ours, (int, float)) and isinstance(ref, (int, float)) and ref:
        return round(ours / ref, 3)
    return None


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", type=int, default=20)
    p.add_argument("--rounds", type=int, default=9,
                   help="one-at-a-time starts and restarts per target (the reference's start times are bimodal)")
    p.add_argument("--executes", type=int, default=200)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = p.parse_args()

    gateway_id = "kge-bench-" + uuid.uuid4().hex[:6]
    ours = our_target("kernel_gateway_ext", gateway_id)
    ref = reference_target()
    pooled = our_target("kernel_gateway_ext (pool)", f"{gateway_id}-pool",
                        "--GatewayKernelManager.pool_sizes", f"python3={args.kernels}")
    # Egress off: kernels without a network, over IPC sockets (KGE_NETWORK_EGRESS=0).
    internal = f"{gateway_id}-internal"
    no_egress = our_target("kernel_gateway_ext (no egress: no network, IPC)", f"{gateway_id}-ipc",
                           env={"KGE_NETWORK": internal, "KGE_NETWORK_EGRESS": "0"})
    results: dict[str, Any] = {"machine": {"cores": os.cpu_count()}, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results[pooled.name] = await run_on(pooled, lambda: measure_pooled(pooled, args))
    try:
        results[no_egress.name] = await run_on(no_egress, lambda: measure_cold_starts(no_egress, args))
    finally:
        subprocess.run(["docker", "network", "rm", internal], capture_output=True)
    for target, gid in ((ours, gateway_id), (ref, None)):
        results[target.name] = await run_on(target, lambda: measure(target, args, gid))
    a, b = results[ours.name], results[ref.name]
    results["ratio_ours_over_reference"] = {k: ratio(a[k], b[k]) for k in a if ratio(a[k], b[k]) is not None}
    p = results[pooled.name]
    results["ratio_ours_over_reference"]["pooled_start_vs_reference_start"] = ratio(
        p["pooled_start_to_first_reply_s"], b["start_to_first_reply_s"])
    results["ratio_ours_over_reference"][f"pooled_concurrent_{args.kernels}_vs_reference"] = ratio(
        p[f"pooled_concurrent_starts_{args.kernels}_to_reply_s"], b[f"concurrent_starts_{args.kernels}_to_reply_s"])
    n = results[no_egress.name]
    for key in ("start_to_first_reply_s", f"concurrent_starts_{args.kernels}_to_reply_s",
                "machine_cpu_s_per_concurrent_start"):
        results["ratio_ours_over_reference"][f"no_egress_{key}"] = ratio(n[key], b[key])
    write_results(results, args.out)


if __name__ == "__main__":
    asyncio.run(main())
