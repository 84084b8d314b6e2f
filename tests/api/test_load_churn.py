"""bench/load.py at CI size: concurrent clients executing with 0 errors, and create/delete churn
leaving 0 containers, store records and connection files. (Full size: bench/load.py.)"""
from __future__ import annotations

import os

from bench.load import churn, leftovers_ours, load
from tests.conftest import TOKEN, require_docker, start_process_gateway, stop_process_gateway


async def test_load_and_churn_at_ci_size(tmp_path) -> None:
    require_docker()
    gw = start_process_gateway(str(tmp_path), "--log-level=WARN")
    try:
        r = await load(gw.url, TOKEN, clients=20, kernels=2, seconds=8)
        assert r["errors"] == 0 and r["executes"] > 20, r
        print(f"load: {r}")
        c = await churn(gw.url, TOKEN, cycles=40)
        assert c["failures"] == 0 and c["kernels_listed_after"] == 0, c
        left = leftovers_ours(gw.gateway_id, os.environ["KGE_STATE_DIR"])
        assert left == {"containers": 0, "store_records": 0, "connection_files": 0, "pool_containers": 0}, left
        print(f"churn: {c} left {left}")
    finally:
        assert stop_process_gateway(gw) == 0
