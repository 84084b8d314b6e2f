"""A kernel's iopub is read through one subscription (kernels/iopub.py), shared by every client
session and REST run on it. A pooled kernel's is live when handed out, so its first websocket
waits for no probe; after a restart one probe serves every session, and no output is lost to
ZMQ's slow joiner; the subscription goes with the kernel."""
from __future__ import annotations

import asyncio

from tests.api.test_pool import wait_pool
from tests.api.test_websocket_sessions import drain
from tests.conftest import TOKEN
from tests.wsclient import KernelWS


async def test_sessions_share_the_kernels_one_subscription(make_gateway) -> None:
    async with make_gateway("--GatewayKernelManager.pool_sizes", "python3=1") as gw:
        mgr = gw.app.kernel_manager
        await wait_pool(gw, "python3", 1)
        (pooled,) = mgr.pool.ready["python3"]
        hub = pooled.iopub
        assert hub is not None and hub.live, "a pooled kernel's subscription is live before hand-out"
        r = await gw.client.fetch("POST", "/api/kernels", {"name": "python3"})
        kid = r.json["id"]
        km = mgr.get(kid)
        assert km is pooled and km.iopub is hub, "the hand-out keeps the subscription"

        a = await KernelWS.connect(gw.url, kid, TOKEN, session="sub-a")
        b = await KernelWS.connect(gw.url, kid, TOKEN, session="sub-b")
        # Printed at once, before either socket asked anything else: both sessions see it, once.
        r1 = await a.execute("print('first')")
        assert a.stdout(r1) == "first\n"
        seen_b = [m for m in await drain(b, 1.0) if m["msg_type"] == "stream"]
        assert [m["content"]["text"] for m in seen_b] == ["first\n"]
        assert hub.probes == 0, "a live subscription made a session wait"
        assert len(hub.subscribers) == 2
        assert all("iopub" not in bridge.streams for bridge in gw.app.bridges.by_kernel[kid].values())

        r = await gw.client.fetch("POST", f"/api/kernels/{kid}/restart", {})
        assert r.status == 200
        # One probe for every session, not one each; none when the new process's answer to the
        # restart's own readiness check already came through the rejoined subscription (a race the
        # SUB's reconnect decides: either way the subscription is live before the restart answers).
        after_restart = hub.probes
        assert after_restart <= 1 and hub.live, "one probe after the restart, for every session"
        r2 = await b.execute("print('after')", timeout=10)
        assert b.stdout(r2) == "after\n"
        seen_a = [m for m in await drain(a, 1.0) if m["msg_type"] == "stream"]
        assert [m["content"]["text"] for m in seen_a] == ["after\n"]
        assert hub.probes == after_restart

        for ws in (a, b):
            ws.close()
        await gw.client.fetch("DELETE", f"/api/kernels/{kid}")
        assert hub.closed and km.iopub is None and hub.stream.closed()


async def test_a_cold_kernels_first_session_probes_once_and_loses_nothing(make_gateway) -> None:
    async with make_gateway() as gw:
        r = await gw.client.fetch("POST", "/api/kernels", {"name": "python3"})
        kid = r.json["id"]
        hub = gw.app.kernel_manager.get(kid).iopub
        sockets = await asyncio.gather(*(KernelWS.connect(gw.url, kid, TOKEN, session=f"cold-{i}") for i in range(3)))
        assert hub.probes <= 1, "sessions opened together share one probe"
        r1 = await sockets[0].execute("print('hello')")
        assert sockets[0].stdout(r1) == "hello\n"
        for ws in sockets[1:]:
            assert [m["content"]["text"] for m in await drain(ws, 0.5) if m["msg_type"] == "stream"] == ["hello\n"]
        for ws in sockets:
            ws.close()
        await gw.client.fetch("DELETE", f"/api/kernels/{kid}")


async def test_an_unread_idle_kernels_subscription_is_let_go_and_taken_again(make_gateway) -> None:
    async with make_gateway("--GatewayKernelManager.output_release_after=1", "--Gateway.ws_buffer_seconds=0.2") as gw:
        r = await gw.client.fetch("POST", "/api/kernels", {"name": "python3"})
        kid = r.json["id"]
        km = gw.app.kernel_manager.get(kid)
        released: list[str] = []  # what the memory trim is told
        gw.app.kernel_manager.on_output_released(lambda: released.append(kid))
        ws = await KernelWS.connect(gw.url, kid, TOKEN)
        # Busy when its last reader leaves: the subscription stays until the kernel is idle.
        msg_id = await ws.send(ws.msg("execute_request", {"code": "import time; time.sleep(3); print('done')",
                                                           "silent": False, "store_history": True,
                                                           "user_expressions": {}, "allow_stdin": False}))
        await asyncio.sleep(0.5)
        hub = km.iopub
        ws.close()
        await asyncio.sleep(2.0)
        assert km.iopub is hub and not hub.closed and km.execution_state == "busy"
        deadline = asyncio.get_running_loop().time() + 10
        while km.iopub is not None:
            assert asyncio.get_running_loop().time() < deadline, "the subscription was never let go"
            await asyncio.sleep(0.2)
        assert hub.closed and hub.stream.closed() and km.execution_state == "idle", msg_id
        assert released == [kid]
        # The next reader subscribes again and loses nothing.
        ws = await KernelWS.connect(gw.url, kid, TOKEN, session="back")
        assert km.iopub is not None and km.iopub is not hub and km.iopub.probes == 1
        out = await ws.execute("print('again')")
        assert ws.stdout(out) == "again\n"
        ws.close()
        await gw.client.fetch("DELETE", f"/api/kernels/{kid}")
