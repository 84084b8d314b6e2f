"""A kernel or session that fills the host's disk is stopped at its share (KGE_DISK_LIMIT,
KGE_DISK_MAX_FILES), with its files; its neighbours, and a kernel holding a sparse terabyte, are
not. Real engine, real kernels, real writes."""
from __future__ import annotations

import asyncio
import time
import uuid

from tests.api.test_skaha_api import IMAGE, create, skaha
from tests.clients.v2util import create_keys
from tests.conftest import Client
from tests.wsclient import KernelWS

ARGS = ("--DiskGuard.limit=64m", "--DiskGuard.max_files=2000", "--DiskGuard.check_seconds=0.5")


async def start(gw, code: str) -> tuple[str, str]:
    """A kernel that has run `code`; (its id, its container id)."""
    kid = (await gw.client.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
    ws = await KernelWS.connect(gw.url, kid, gw.client.token)
    try:
        reply = await ws.execute(code, timeout=60)
        assert reply["reply"]["status"] == "ok", reply
    finally:
        ws.close()
    return kid, gw.app.kernel_manager.get(kid).docker.container_id


async def gone(client: Client, kid: str, limit: float) -> float:
    began = time.monotonic()
    while (await client.fetch("GET", f"/api/kernels/{kid}")).status != 404:
        assert time.monotonic() - began < limit, f"kernel {kid} still there after {limit} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - began


async def test_a_container_past_its_disk_share_is_stopped_with_its_files(make_gateway, docker_client) -> None:
    async with make_gateway(*ARGS) as gw:
        status = (await gw.client.fetch("GET", "/api")).json
        assert not [w for w in status.get("warnings", []) if "disk" in w], status  # root, local engine: counted
        writes = "open('/home/work/ok', 'wb').write(bytes(8 << 20))\n"
        sparse = "f = open('/tmp/sparse', 'wb'); f.truncate(1 << 40); f.close()\n"
        keeper, keeper_cid = await start(gw, writes + sparse)
        # 100 MiB of zeros (real blocks) against a 64 MiB share, in the home folder and /tmp
        hog, hog_cid = await start(gw, "open('/home/work/a', 'wb').write(bytes(60 << 20))\n"
                                       "open('/tmp/b', 'wb').write(bytes(40 << 20))\n")
        took = await gone(gw.client, hog, 10)
        assert docker_client.containers.list(all=True, filters={"id": hog_cid}) == []  # its files went with it
        # 3,000 empty files against a bound of 2,000
        many, _ = await start(gw, "import os\nfor i in range(3000): open(f'/home/work/f{i}', 'w').close()\n")
        await gone(gw.client, many, 10)

        # A headless session is held to the same share.
        alice = create_keys("disk-" + uuid.uuid4().hex[:6])
        code, sid = await create(gw, alice, name="filler", image=IMAGE, cmd="sh",
                                 args="-c 'head -c 100000000 /dev/zero > /home/work/fill; sleep 600'")
        assert code == 200, sid
        c, h = skaha(gw, alice)
        began = time.monotonic()
        while (await c.fetch("GET", f"/skaha/v1/session/{sid.strip()}", headers=h, token=None)).status != 404:
            assert time.monotonic() - began < 20, "the session that filled its share is still there"
            await asyncio.sleep(0.2)

        # The neighbour with 8 MiB and a sparse terabyte (which holds no disk) is untouched.
        ws = await KernelWS.connect(gw.url, keeper, gw.client.token)
        try:
            out = await ws.execute("import os; print(os.path.getsize('/tmp/sparse') >> 40)")
            assert ws.stdout(out).strip() == "1"
        finally:
            ws.close()
        assert docker_client.containers.get(keeper_cid).status == "running"
        assert gw.app.disk_guard.stopped == 3
        print(f"\n[disk] a kernel writing 100 MiB against a 64 MiB share was stopped {took:.1f} s after its write "
              "(counted every 0.5 s)")
