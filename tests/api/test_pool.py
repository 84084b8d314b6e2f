"""The warm pool: ready kernels handed to starts they can serve exactly, refilled in the background."""
from __future__ import annotations

import asyncio
import time

from tests.wsclient import KernelWS
from tests.conftest import TOKEN


async def wait_pool(gw, name: str, size: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(gw.app.kernel_manager.pool.ready.get(name, [])) < size:
        assert time.monotonic() < deadline, "the pool did not fill"
        await asyncio.sleep(0.1)


async def test_pool_hands_out_ready_kernels_and_refills(make_gateway, docker_client) -> None:
    async with make_gateway("--GatewayKernelManager.pool_sizes", "python3=2") as gw:
        mgr = gw.app.kernel_manager
        await wait_pool(gw, "python3", 2)
        assert (await gw.client.fetch("GET", "/api/kernels")).json == []  # pooled kernels are not listed
        t0 = time.monotonic()
        r = await gw.client.fetch("POST", "/api/kernels", {"name": "python3", "env": {"KERNEL_USERNAME": "pooled-ann"}})
        took = time.monotonic() - t0
        assert r.status == 201 and mgr.pool.hits == 1 and took < 0.5, (took, mgr.pool.hits)
        kid = r.json["id"]
        ws = await KernelWS.connect(gw.url, kid, TOKEN)
        out = ws.stdout(await ws.execute("import os, subprocess\nprint(os.environ['KERNEL_USERNAME'], "
                                          "subprocess.run(['sh', '-c', 'echo $KERNEL_USERNAME'], capture_output=True, text=True).stdout.strip())"))
        assert out == "pooled-ann pooled-ann\n"
        ws.close()
        # the pool refills in the background
        await wait_pool(gw, "python3", 2)
        # other limits are applied to the pooled kernel's running container (test_pool_specialise.py)
        from kernel_gateway_ext.containers.limits import KernelLimits

        km = await mgr.start(owner="x", kernel_name="python3", limits=KernelLimits(memory_bytes=300 * 2**20))
        assert mgr.pool.hits == 2
        deadline = time.monotonic() + 5  # the cgroup has it at once; the engine's record a moment later
        while True:
            (container,) = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={km.kernel_id}"})
            if container.attrs["HostConfig"]["Memory"] == 300 * 2**20 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert container.attrs["HostConfig"]["Memory"] == 300 * 2**20
        await mgr.shutdown(km.kernel_id, now=True)
        assert (await gw.client.fetch("DELETE", f"/api/kernels/{kid}")).status == 204
        # a pooled kernel killed from outside is replaced
        victim = mgr.pool.ready["python3"][0]
        docker_client.containers.get(victim.docker.container_id).kill()
        for _ in range(100):
            if victim not in mgr.pool.ready["python3"] and len(mgr.pool.ready["python3"]) == 2:
                break
            await asyncio.sleep(0.1)
        assert victim not in mgr.pool.ready["python3"]
        await wait_pool(gw, "python3", 2)


async def test_a_refill_waits_while_the_pool_has_ready_kernels(make_gateway, monkeypatch) -> None:
    """The refill of a kernel handed out starts a moment later while the pool has ready kernels
    (its first steps would slow the start just served), at once when the pool ran dry."""
    from kernel_gateway_ext.kernels import pool as pool_module

    monkeypatch.setattr(pool_module, "REFILL_DEFER", 30.0)  # a moment made long enough to see
    async with make_gateway("--GatewayKernelManager.pool_sizes", "python3=2") as gw:
        pool = gw.app.kernel_manager.pool
        await wait_pool(gw, "python3", 2)
        first = await gw.client.fetch("POST", "/api/kernels", {"name": "python3"})
        await asyncio.sleep(1.0)
        assert len(pool.ready["python3"]) == 1 and pool.filling.get("python3", 0) == 0
        second = await gw.client.fetch("POST", "/api/kernels", {"name": "python3"})
        assert pool.filling.get("python3", 0) == 2, "a dry pool refills at once, all it lacks"
        assert pool.hits == 2
        await wait_pool(gw, "python3", 2)
        for r in (first, second):
            await gw.client.fetch("DELETE", f"/api/kernels/{r.json['id']}")


async def test_pool_grows_with_the_start_rate_and_trims_back(make_gateway, monkeypatch) -> None:
    from kernel_gateway_ext.kernels import pool as pool_module

    monkeypatch.setattr(pool_module, "TRIM_AFTER", 0.5)
    async with make_gateway("--GatewayKernelManager.pool_sizes", "python3=1",
                            "--GatewayKernelManager.pool_max_sizes", "python3=4") as gw:
        mgr = gw.app.kernel_manager
        await wait_pool(gw, "python3", 1)
        assert (await gw.client.fetch("GET", "/api")).json["pools"]["python3"] == {"ready": 1, "size": 1, "min": 1, "max": 4}
        kids = []
        for _ in range(3):  # a burst: the pool aims higher and fills towards it
            r = await gw.client.fetch("POST", "/api/kernels", {"name": "python3"})
            kids.append(r.json["id"])
        status = mgr.pool.status()["python3"]
        assert 1 < status["size"] <= 4, status
        await wait_pool(gw, "python3", status["size"], timeout=90)
        for kid in kids:
            assert (await gw.client.fetch("DELETE", f"/api/kernels/{kid}")).status == 204
        # Once the starts are long past, it trims back to its floor.
        real = mgr.pool.sizer.clock
        mgr.pool.sizer.clock = lambda: real() + 1000
        mgr.pool.fill()
        deadline = time.monotonic() + 30
        while len(mgr.pool.ready.get("python3", [])) > 1:
            assert time.monotonic() < deadline, mgr.pool.status()
            await asyncio.sleep(0.1)
        assert mgr.pool.status()["python3"]["size"] == 1


async def test_a_start_finding_the_pool_empty_joins_the_refill_under_way(make_gateway) -> None:
    async with make_gateway("--GatewayKernelManager.pool_sizes", "python3=1") as gw:
        mgr = gw.app.kernel_manager
        await wait_pool(gw, "python3", 1)
        first = await mgr.start(owner="ann", kernel_name="python3")  # takes the ready one; its refill starts
        deadline = time.monotonic() + 10
        while not mgr.pool.launching.get("python3"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        second = await mgr.start(owner="ann", kernel_name="python3")  # waits for that refill
        assert (mgr.pool.hits, mgr.pool.misses) == (2, 0)
        ws = await KernelWS.connect(gw.url, second.kernel_id, TOKEN)
        assert ws.stdout(await ws.execute("print(6 * 7)")) == "42\n"
        ws.close()
        for km in (first, second):
            await mgr.shutdown(km.kernel_id, now=True)
