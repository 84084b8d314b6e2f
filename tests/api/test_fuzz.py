"""schemathesis against the served OpenAPI descriptions: at least 1000 generated requests per
dialect, no 5xx, and nothing left behind (containers, store records) when the gateway stops."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import docker
import pytest

from tests.clients.v2util import create_keys
from tests.conftest import TOKEN, require_docker, start_process_gateway, stop_process_gateway

MIN_REQUESTS = 1000
# One worker per process: hypothesis in several threads trips a CPython 3.11 ast bug (gh-106905).
EXAMPLES = {"jupyter": 130, "v2": 80, "skaha": 100, "page": 150}  # per operation; chosen so each dialect passes 1000 requests
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory):
    require_docker()
    # Small limits: generated starts mostly meet 403/429 fast, and nothing can flood the host.
    gw = start_process_gateway(str(tmp_path_factory.mktemp("fuzz")), "--GatewayKernelManager.max_kernels=3",
                               env={"KGE_MEMORY_BUDGET": "12g"})
    yield gw
    assert stop_process_gateway(gw) == 0, open(gw.log_path).read()[-3000:]
    left = docker.from_env().containers.list(all=True, filters={"label": f"org.kge.gateway={gw.gateway_id}"})
    assert not left, f"fuzzing left containers: {[c.short_id for c in left]}"
    with sqlite3.connect(os.path.join(os.environ["KGE_STATE_DIR"], "state.db")) as db:
        rows = db.execute("SELECT kind, id FROM records WHERE gateway = ?", (gw.gateway_id,)).fetchall()
    assert rows == [], f"fuzzing left store records: {rows}"


def test_fuzz_every_dialect(fuzz_gateway, tmp_path) -> None:
    # The dialects (and the page's API) are fuzzed at once, each by its own single-worker schemathesis process.
    procs = {}
    for dialect in ("jupyter", "v2", "skaha", "page"):
        keys = create_keys(f"fuzz-{dialect}")
        auth = f"Bearer {keys.token}" if dialect == "skaha" else f"token {keys.token}"
        har = tmp_path / f"{dialect}.har"
        procs[dialect] = (har, subprocess.Popen(
            [str(SCHEMATHESIS), "run", f"{fuzz_gateway.url}openapi/{dialect}.json", "--checks", "not_a_server_error",
             "--phases", "examples,fuzzing", "-n", str(EXAMPLES[dialect]), "--seed", "20261122",
             "--generation-database", "none", "--no-shrink", "--workers", "1", "--request-timeout", "90",
             "-H", f"Authorization: {auth}", "--report", "har", "--report-har-path", str(har), "--no-color",
             "--output-sanitize", "true"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for dialect, (har, proc) in procs.items():
        out, _ = proc.communicate(timeout=900)
        entries = json.loads(har.read_text())["log"]["entries"] if har.exists() else []
        server_errors = [(e["request"]["method"], e["request"]["url"], e["response"]["status"])
                         for e in entries if e["response"]["status"] >= 500]
        assert proc.returncode == 0 and not server_errors, f"{dialect}: {server_errors[:10]}\n{out[-6000:]}"
        assert len(entries) >= MIN_REQUESTS, f"{dialect}: only {len(entries)} requests were generated"
        print(f"{dialect}: {len(entries)} requests, 0 server errors")
    # Every container of the gateway is one it lists (none orphaned by a bad request).
    req = urllib.request.Request(fuzz_gateway.url + "api/kernels", headers={"Authorization": f"token {TOKEN}"})
    listed = {k["id"] for k in json.loads(urllib.request.urlopen(req).read())}
    containers = docker.from_env().containers.list(
        all=True, filters={"label": [f"org.kge.gateway={fuzz_gateway.gateway_id}", "org.kge.kind=kernel"]})
    assert {c.labels["org.kge.kernel.id"] for c in containers} == listed
