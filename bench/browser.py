#!/usr/bin/env python3
"""The start a notebook user sees, measured in the browser, side by side in one run:

- kernel_gateway_ext as `scripts/start-gateway` runs it (default warm pool),
- kernel_gateway_ext with the pool turned off (KGE_POOL_SIZES='{}'),
- Jupyter Kernel Gateway 3.0.1 with local kernels (the reference; bench/.venv-kg),

each under the same JupyterLab (started with --gateway-url) in headless Chromium. A round clicks
the Python notebook card of a new launcher, waits until the status bar says Idle (a Shift+Enter
pressed earlier is dropped by JupyterLab), runs `1` and waits for its output.

    .venv/bin/python bench/browser.py [--rounds 8] [--out bench/results/browser.json]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench import ensure_kg  # noqa: E402
from tests.browser.lab import Lab, LabServer, browser_problem  # noqa: E402
from tests.ports import free_port  # noqa: E402

TOKEN = "bench-" + uuid.uuid4().hex[:8]


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            req = urllib.request.Request(url + "api", headers={"Authorization": f"token {TOKEN}"})
            urllib.request.urlopen(req, timeout=2).read()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up") from None
            time.sleep(0.2)


def pool_ready(url: str) -> bool:
    req = urllib.request.Request(url + "api", headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        pools = json.loads(r.read()).get("pools", {})
    return all(p["ready"] >= p["size"] for p in pools.values())


def pool_memory_mb(gateway_id: str) -> list[float]:
    """Memory of each container the gateway runs (the pool's, before any notebook): usage less
    page cache, as the engine accounts it."""
    import docker

    out = []
    for c in docker.from_env().containers.list(filters={"label": f"org.kge.gateway={gateway_id}"}):
        mem = c.stats(stream=False)["memory_stats"]
        out.append((mem.get("usage", 0) - (mem.get("stats") or {}).get("cache", 0)) / 2**20)
    return out


def start_target(name: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str, str | None]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = open(workdir / f"{name}.log", "wb")
    if name == "reference":
        kg = ensure_kg()
        argv = [str(kg), f"--KernelGatewayApp.port={port}", f"--KernelGatewayApp.auth_token={TOKEN}",
                "--JupyterWebsocketPersonality.list_kernels=True", "--KernelGatewayApp.log_level=WARN"]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_up(url, proc)
        return proc, url, None
    gateway_id = f"kge-bench-{name}-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if k != "KGE_POOL_SIZES"}
    env.update(KGE_VENV=sys.prefix, KGE_STATE_DIR=str(workdir / f"state-{name}"))
    if name == "ours-no-pool":
        env["KGE_POOL_SIZES"] = "{}"
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "start-gateway"), "--ip=127.0.0.1", f"--port={port}",
                             f"--auth-token={TOKEN}", f"--gateway-id={gateway_id}", "--log-level=WARN"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_up(url, proc)
    return proc, url, gateway_id


def python_card(lab: Lab) -> str:
    titles = lab.js("return [...document.querySelectorAll('.jp-LauncherCard[data-category=\"Notebook\"]')]"
                    ".map(e => e.title)")
    return next(t for t in titles if t.startswith("Python 3"))


def rounds(lab: Lab, n: int, timeout: float) -> dict[str, Any]:
    title = python_card(lab)
    idle: list[float] = []
    output: list[float] = []
    stuck = 0
    for _ in range(n):
        try:
            _, clicked, to_idle = lab.new_notebook(title, timeout)
            lab.wait_output(lab.run_cell("1"), "1", timeout)
        except TimeoutError:
            stuck += 1  # the notebook never connected (a person would see "Initializing" or "Unknown")
            continue
        idle.append(to_idle)
        output.append(time.monotonic() - clicked)
        time.sleep(1.0)  # a person reads the result before opening the next notebook
    return {"click_to_idle_s": idle, "click_to_first_output_s": output, "never_connected": stuck}


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a notebook counts as never connected")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "browser.json"))
    args = p.parse_args()
    problem = browser_problem()
    if problem:
        sys.exit(f"bench/browser.py: {problem}")
    workdir = Path(tempfile.mkdtemp(prefix="kge-bench-browser-"))
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rounds": args.rounds}
    for name in ("ours-default-pool", "ours-no-pool", "reference"):
        print(f"bench: {name}", file=sys.stderr)
        proc, url, gateway_id = start_target(name, workdir)
        try:
            if gateway_id is not None and name == "ours-default-pool":
                deadline = time.monotonic() + 120
                while not pool_ready(url) and time.monotonic() < deadline:
                    time.sleep(0.5)
                mem = pool_memory_mb(gateway_id)
                results["default_pool_memory_mb"] = {"kernels": len(mem), "each": [round(m, 1) for m in mem],
                                                     "total": round(sum(mem), 1)}
            server = LabServer.start(url, TOKEN, workdir / f"lab-{name}")
            lab = Lab(server, workdir / "shots")
            try:
                lab.open()
                measured = rounds(lab, args.rounds, args.timeout)
            finally:
                lab.close()
                server.stop()
            stuck = measured.pop("never_connected")
            results[name] = {k: {**stats(v), "all": [round(x, 3) for x in v]} for k, v in measured.items()}
            results[name]["never_connected"] = stuck
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    ref = results["reference"]
    print(f"\n{'median (min-max), s':<28}{'ours, default pool':>22}{'ours, no pool':>20}{'KG 3.0.1 local':>20}{'pool/KG':>9}")
    for key, label in (("click_to_idle_s", "click -> Idle"), ("click_to_first_output_s", "click -> first output")):
        cols = [f"{results[n][key]['median']:.2f} ({results[n][key]['min']:.2f}-{results[n][key]['max']:.2f})"
                for n in ("ours-default-pool", "ours-no-pool", "reference")]
        r = results["ours-default-pool"][key]["median"] / ref[key]["median"]
        print(f"{label:<28}{cols[0]:>22}{cols[1]:>20}{cols[2]:>20}{r:>9.2f}")
    print(f"{'notebooks never connected':<28}" + "".join(
        f"{str(results[n]['never_connected']) + '/' + str(args.rounds):>{w}}"
        for n, w in (("ours-default-pool", 22), ("ours-no-pool", 20), ("reference", 20))))
    mem = results.get("default_pool_memory_mb", {})
    print(f"default pool: {mem.get('kernels')} ready kernels, {mem.get('total')} MB together")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
