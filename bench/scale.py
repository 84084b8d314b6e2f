#!/usr/bin/env python3
"""Many idle kernels on one host, ours and Jupyter Kernel Gateway 3.0.1 (local kernels) in one run.

    .venv/bin/python bench/scale.py [--kernels 300] [--burst 50] [--ours-only] [--out bench/results/scale.json]

For each gateway, after 5 kernels were started and deleted (warm-up): the worst GET /api latency
while `--burst` kernels start at once (a client on the same starved cores: the stall as a caller
sees it), and for ours the event loop's own worst lag over that time (kge_event_loop_lag_max_seconds),
next to the machine's floor over that time (a bare process's worst late wake-up: what the host's
busy cores do to any process);
then kernels are started up to `--kernels`, 25 at a time (fewer when the host's available memory
falls under 1.5 GiB: the figure says how many fit); then the gateway process's own memory per kernel
(its PSS growth over its PSS after the warm-up, / N: right after the starts, once the sessions
the websockets left are gone, and for ours once the idle kernels' output subscriptions were let go
(the figure; KGE_OUTPUT_RELEASE_AFTER); and over its PSS with no kernel yet),
the kernels' memory per kernel (PSS of their processes), GET /api/kernels p50/p99 with N kernels,
and for ours what one count of the disk guard (every container's own files) costs with N.
Every kernel is deleted at the end and what is left (containers of the bench's gateway) counted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from bench.bench import TOKEN, Target, reference_target, write_results, start_and_answer  # noqa: E402

MIN_AVAILABLE = 1.5 * 2**30  # stop adding kernels below this much available memory
WARM_UP = 5
RECONNECT_WINDOW = 60.0  # ours keeps a closed websocket's session 60 s (KGE_WS_BUFFER_SECONDS)
# Then ours gives freed memory back once 10 s pass with no session closing (KGE_MEMORY_TRIM_DELAY).
# The figures are read after both: 5 s after the window they came before the trim (at 300 kernels,
# 158 KiB per kernel against 113 after).
SETTLE = 25.0
OUTPUT_RELEASE_AFTER = 120.0  # ours lets an unread idle kernel's iopub subscription go (KGE_OUTPUT_RELEASE_AFTER)


async def loop_lag_max(t: Target) -> float:
    r = await t.fetch("GET", "/metrics")
    for line in r.body.decode().splitlines():
        if line.startswith("kge_event_loop_lag_max_seconds "):
            return float(line.split()[1])
    raise RuntimeError("no kge_event_loop_lag_max_seconds in /metrics")


def pss_kib(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def available_bytes() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def kernels_pss_mib(t: Target, gateway_id: str | None) -> float:
    """Memory per kernel: PSS of every process of each kernel (ours: all in its container)."""
    if gateway_id is not None:
        client = docker.from_env()
        totals = []
        for c in client.containers.list(filters={"label": f"org.kge.gateway={gateway_id}"}):
            init = int(c.attrs["State"]["Pid"])
            totals.append(sum(pss_kib(p) for p in [init, *descendants(init)]))
        return statistics.mean(totals) / 1024 if totals else 0.0
    assert t.proc is not None
    kernels = descendants(t.proc.pid)
    return statistics.mean(pss_kib(p) for p in kernels) / 1024 if kernels else 0.0


# The machine's own floor: a bare process (no gateway code, highest priority it may take) that
# sleeps 5 ms at a time and records how late it woke. What it sees during a burst, the host (its
# cores busy with the engine, runc and the kernels' imports) does to any process, ours included.
STALL_PROBE = """
import os, signal, sys, time
try:
    os.nice(-20)
except OSError:
    pass
worst, last = 0.0, time.monotonic()
def done(*_):
    print(round(worst * 1000, 1), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    time.sleep(0.005)
    now = time.monotonic()
    worst, last = max(worst, now - last - 0.005), now
"""


async def machine_stall_during(work: Any) -> tuple[float, Any]:
    """(the bare probe's worst late wake-up in ms, work's result) while `work` runs."""
    probe = await asyncio.create_subprocess_exec(sys.executable, "-c", STALL_PROBE, stdout=asyncio.subprocess.PIPE)
    try:
        result = await work
    finally:
        probe.terminate()
        out, _ = await probe.communicate()
    return float(out.decode().strip() or "nan"), result


async def worst_latency_during(t: Target, work: Any) -> tuple[float, float, Any]:
    """(median, max) ms of GET /api sent back to back while `work` runs."""
    times: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await t.fetch("GET", "/api")
            times.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.005)

    task = asyncio.ensure_future(probe())
    try:
        result = await work
    finally:
        done.set()
        await task
    return round(statistics.median(times), 2), round(max(times), 2), result


async def measure(t: Target, args: argparse.Namespace, gateway_id: str | None) -> dict[str, Any]:
    assert t.proc is not None
    res: dict[str, Any] = {}
    await asyncio.sleep(2.0)
    base = pss_kib(t.proc.pid)
    # A few kernels started and deleted first: what the first starts load once (modules, threads,
    # buffers) is not a cost per kernel. Both figures are kept.
    for kid in await asyncio.gather(*(start_and_answer(t) for _ in range(WARM_UP))):
        await t.delete(kid)
    await asyncio.sleep(2.0)
    warm_base = pss_kib(t.proc.pid)
    idle_median, idle_max, _ = await worst_latency_during(t, asyncio.sleep(2.0))
    res["api_latency_idle_ms"] = {"median": idle_median, "max": idle_max}
    print(f"bench: {t.name}: {args.burst} starts at once", file=sys.stderr)
    floor, (med, worst, burst) = await machine_stall_during(worst_latency_during(
        t, asyncio.gather(*(start_and_answer(t) for _ in range(args.burst)), return_exceptions=True)))
    res[f"api_latency_during_{args.burst}_starts_ms"] = {"median": med, "max": worst}
    res[f"machine_worst_stall_during_{args.burst}_starts_ms"] = floor
    failed = [e for e in burst if isinstance(e, BaseException)]
    if failed:  # said, not fatal: the reference's websockets time out under this burst now and then
        res["burst_starts_failed"] = f"{len(failed)} of {args.burst}: {type(failed[0]).__name__}: {failed[0]}"
    if gateway_id is not None:  # ours measures its event loop's stalls from inside (metrics.LoopLag)
        res[f"event_loop_worst_lag_during_{args.burst}_starts_ms"] = round(await loop_lag_max(t) * 1000, 1)
    kids = [k for k in burst if isinstance(k, str)]
    while len(kids) < args.kernels:
        if available_bytes() < MIN_AVAILABLE:
            print(f"bench: {t.name}: stopping at {len(kids)} kernels (host memory)", file=sys.stderr)
            break
        batch = min(25, args.kernels - len(kids))
        started = await asyncio.gather(*(start_and_answer(t) for _ in range(batch)), return_exceptions=True)
        kids += [k for k in started if isinstance(k, str)]
        failed = [e for e in started if isinstance(e, BaseException)]
        print(f"bench: {t.name}: {len(kids)} kernels", file=sys.stderr)
        if failed:  # the figure says where a gateway gave out, and measures what it has
            res["starts_failed"] = f"{len(failed)} of a batch at {len(kids)} kernels: {type(failed[0]).__name__}: {failed[0]}"
            print(f"bench: {t.name}: {res['starts_failed']}", file=sys.stderr)
            break
    await asyncio.sleep(3.0)
    n = len(kids)
    res["kernels"] = n
    # Right after the starts each kernel still holds the session its websocket left (ours keeps
    # it, its sockets and its output for KGE_WS_BUFFER_SECONDS, 60 s, for a reconnect); then idle.
    res["gateway_kib_per_kernel_disconnected_sessions_kept"] = round((pss_kib(t.proc.pid) - warm_base) / n, 1)
    await asyncio.sleep(RECONNECT_WINDOW + SETTLE)
    if gateway_id is not None:  # ours: idle kernels' output subscriptions are let go after a while
        res["gateway_kib_per_kernel_output_subscriptions_held"] = round((pss_kib(t.proc.pid) - warm_base) / n, 1)
        await asyncio.sleep(OUTPUT_RELEASE_AFTER)
    now = pss_kib(t.proc.pid)
    res["gateway_kib_per_kernel_from_cold"] = round((now - base) / n, 1)
    res["gateway_kib_per_kernel"] = round((now - warm_base) / n, 1)
    res["kernel_pss_mib"] = round(kernels_pss_mib(t, gateway_id), 1)
    lat = []
    for _ in range(200):
        t0 = time.perf_counter()
        await t.fetch("GET", "/api/kernels")
        lat.append((time.perf_counter() - t0) * 1000)
    lat.sort()
    res[f"api_kernels_ms_with_{n}"] = {"p50": round(lat[100], 2), "p99": round(lat[197], 2)}
    if gateway_id is not None:  # ours: what one count of the disk guard costs over them all
        res[f"disk_count_ms_with_{n}"] = disk_count_ms(gateway_id)
    print(f"bench: {t.name}: deleting {n}", file=sys.stderr)
    for i in range(0, n, 25):
        await asyncio.gather(*(t.delete(k) for k in kids[i:i + 25]))
    if gateway_id is not None:
        await asyncio.sleep(2.0)
        left = docker.from_env().containers.list(all=True, filters={"label": f"org.kge.gateway={gateway_id}"})
        res["containers_left"] = len(left)
    return res


def disk_count_ms(gateway_id: str) -> dict[str, float]:
    """One count of every container's own files as the disk guard makes it every
    KGE_DISK_CHECK_SECONDS (diskguard.py), in this process: median wall and CPU ms of 3."""
    from kernel_gateway_ext.containers.diskuse import measure, written_paths

    client = docker.from_env()
    listed = client.containers.list(filters={"label": f"org.kge.gateway={gateway_id}"})
    paths = [written_paths(client.api.inspect_container(c.id), "/run/kge-ipc") for c in listed]
    runs = []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        for p in paths:
            measure(p, 10 << 30, 1_000_000)
        runs.append(((time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000))
    return {"wall": round(statistics.median(r[0] for r in runs), 1), "cpu": round(statistics.median(r[1] for r in runs), 1)}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", type=int, default=300)
    p.add_argument("--burst", type=int, default=50)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    p.add_argument("--ours-only", action="store_true", help="skip the reference (for quick iterations)")
    p.add_argument("--ours-arg", action="append", default=[], metavar="ARG",
                   help="one more command-line argument for our gateway (repeatable), e.g. a setting to compare")
    args = p.parse_args()
    gateway_id = "kge-bench-" + uuid.uuid4().hex[:6]
    most = str(args.kernels + args.burst)
    ours = Target("kernel_gateway_ext", [sys.executable, "-m", "kernel_gateway_ext", "--port={port}",
                                         f"--auth-token={TOKEN}", f"--gateway-id={gateway_id}", "--log-level=WARN",
                                         f"--GatewayKernelManager.max_kernels={most}",
                                         f"--GatewayKernelManager.max_kernels_per_owner={most}",
                                         "--GatewayKernelManager.memory_budget=", "--GatewayKernelManager.cull_idle_timeout=0",
                                         *args.ours_arg],
                  env={"KGE_KERNEL_MEM_LIMIT": "256m", "KGE_STATE_DIR": f"/tmp/{gateway_id}"})
    ref = None if args.ours_only else reference_target()
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "host_memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    for target, gid in ((ours, gateway_id), (ref, None)):
        if target is None:
            continue
        await target.start()
        try:
            results[target.name] = await measure(target, args, gid)
        except Exception as e:  # noqa: BLE001 - said in the results; the other gateway's figures are kept
            results[target.name] = {"failed": f"{type(e).__name__}: {e}"}
        finally:
            target.stop()
        print(json.dumps({target.name: results[target.name]}), file=sys.stderr)
    write_results(results, args.out)


if __name__ == "__main__":
    asyncio.run(main())
