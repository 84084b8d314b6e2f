"""The kernel websocket against real containers: what JupyterLab and jupyter_server rely on."""
from __future__ import annotations

import asyncio

import pytest
from tornado.httpclient import HTTPClientError

from tests.conftest import TOKEN
from tests.wsclient import KernelWS


async def start(gateway, name: str = "python3") -> str:
    r = await gateway.client.fetch("POST", "/api/kernels", {"name": name})
    assert r.status == 201, r.body
    return r.json["id"]


@pytest.mark.parametrize("v1", [False, True], ids=["legacy", "v1"])
async def test_outputs_errors_display_and_input(gateway, v1) -> None:
    kid = await start(gateway)
    ws = await KernelWS.connect(gateway.url, kid, TOKEN, v1=v1)
    r = await ws.execute("x = 6 * 7\nprint(x)\nx")
    assert r["reply"]["status"] == "ok" and ws.stdout(r) == "42\n"
    assert any(o["type"] == "execute_result" and o["data"]["text/plain"] == "42" for o in r["outputs"])
    r = await ws.execute("name = input('who? ')\nprint('hello', name)", stdin="world")
    assert "hello world" in ws.stdout(r)
    # The error last: after an error with stop_on_error, ipykernel aborts every request that
    # reaches its queue before its own "stop aborting" callback runs (scheduled with call_later(0)
    # when the reply is sent). A request sent right after the error's idle status can win that
    # race on a busy machine and come back `aborted`: the gateway forwarded nothing early.
    r = await ws.execute("from IPython.display import HTML, display\ndisplay(HTML('<b>hi</b>'))\n1/0")
    assert r["reply"]["status"] == "error" and r["reply"]["ename"] == "ZeroDivisionError"
    assert any(o["type"] == "display_data" and o["data"]["text/html"] == "<b>hi</b>" for o in r["outputs"])
    assert any(o["type"] == "error" for o in r["outputs"])
    ws.close()
    assert (await gateway.client.fetch("DELETE", f"/api/kernels/{kid}")).status == 204


async def test_interrupt_restart_keep_the_same_websocket(gateway) -> None:
    kid = await start(gateway)
    ws = await KernelWS.connect(gateway.url, kid, TOKEN, via_query=True)
    assert ws.stdout(await ws.execute("keep = 1; print('ok')")) == "ok\n"
    running = asyncio.ensure_future(ws.execute("import time\nfor i in range(600): time.sleep(0.1)"))
    await asyncio.sleep(1.0)
    assert (await gateway.client.fetch("POST", f"/api/kernels/{kid}/interrupt", {})).status == 204
    r = await asyncio.wait_for(running, 30)
    assert r["reply"]["status"] == "error" and r["reply"]["ename"] == "KeyboardInterrupt"
    model = (await gateway.client.fetch("GET", f"/api/kernels/{kid}")).json
    assert model["connections"] == 1
    assert (await gateway.client.fetch("POST", f"/api/kernels/{kid}/restart", {})).status == 200
    # Same websocket, no reconnect: the kernel is fresh and answers.
    r = await ws.execute("print('keep' in dir())")
    assert ws.stdout(r) == "False\n"
    ws.close()
    await gateway.client.fetch("DELETE", f"/api/kernels/{kid}")


async def test_output_reaches_every_socket_and_quirks_are_accepted(gateway) -> None:
    kid = await start(gateway)
    a = await KernelWS.connect(gateway.url, kid, TOKEN)
    b = await KernelWS.connect(gateway.url, kid, TOKEN, v1=True)
    # a message without "channel" goes to shell; a header date as an epoch number is accepted
    r = await a.execute("print('to all')", omit_channel=True, date_as_number=True)
    assert a.stdout(r) == "to all\n"
    seen = []
    while True:
        m = await b.recv(timeout=10)
        if m["msg_type"] == "stream":
            seen.append(m["content"]["text"])
            break
    assert seen == ["to all\n"]
    # garbage frames are dropped, the socket stays usable
    await a.conn.write_message("{not json")
    await a.conn.write_message('{"channel": "shell"}')
    await a.conn.write_message(b"\x00\x01", binary=True)
    assert a.stdout(await a.execute("print(2)")) == "2\n"
    a.close()
    b.close()
    await gateway.client.fetch("DELETE", f"/api/kernels/{kid}")


async def test_reconnecting_session_gets_missed_output(gateway) -> None:
    kid = await start(gateway)
    ws = await KernelWS.connect(gateway.url, kid, TOKEN, session="sess-1")
    await ws.send(ws.msg("execute_request", {"code": "import time; time.sleep(1); print('while away')", "silent": False}))
    await asyncio.sleep(0.2)
    ws.close()
    await asyncio.sleep(2.0)
    again = await KernelWS.connect(gateway.url, kid, TOKEN, session="sess-1")
    texts = []
    while not texts:
        m = await again.recv(timeout=10)
        if m["msg_type"] == "stream":
            texts.append(m["content"]["text"])
    assert texts == ["while away\n"]
    again.close()
    await gateway.client.fetch("DELETE", f"/api/kernels/{kid}")


async def test_websocket_auth_and_unknown_kernel(gateway) -> None:
    kid = await start(gateway)
    with pytest.raises(HTTPClientError) as e:
        await KernelWS.connect(gateway.url, kid, None)
    assert e.value.code == 401
    with pytest.raises(HTTPClientError) as e:
        await KernelWS.connect(gateway.url, "00000000-0000-0000-0000-000000000000", TOKEN)
    assert e.value.code == 404
    await gateway.client.fetch("DELETE", f"/api/kernels/{kid}")


async def test_dead_kernel_status_reaches_the_socket(make_gateway, docker_client) -> None:
    async with make_gateway("--GatewayKernelManager.autorestart=False") as gateway:
        kid = await start(gateway)
        ws = await KernelWS.connect(gateway.url, kid, TOKEN)
        (container,) = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={kid}"})
        container.kill()
        while True:
            m = await ws.recv(timeout=5)
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "dead":
                break
        ws.close()
        await gateway.client.fetch("DELETE", f"/api/kernels/{kid}")


async def test_bash_kernel(gateway) -> None:
    kid = await start(gateway, "bash")
    ws = await KernelWS.connect(gateway.url, kid, TOKEN)
    r = await ws.execute("echo hello from $(whoami) in $PWD")
    assert ws.stdout(r).strip() == "hello from work in /home/work"
    ws.close()
    await gateway.client.fetch("DELETE", f"/api/kernels/{kid}")


async def test_the_kernel_runs_the_pinned_stack_lightly(gateway) -> None:
    """The image's kernel is the ipykernel/IPython build-images pins (not Debian's older ones),
    debugpy stays blocked (the kernelspec has no debugger), and the nanny holds no preloaded copy:
    one small nanny and the kernel process, nothing else."""
    from kernel_gateway_ext.build_images import KERNEL_STACK

    pins = dict(p.split("==") for p in KERNEL_STACK)
    kid = await start(gateway)
    ws = await KernelWS.connect(gateway.url, kid, TOKEN)
    r = await ws.execute(
        "import IPython, ipykernel, os, sys\n"
        "try:\n    import debugpy; blocked = False\nexcept ImportError:\n    blocked = True\n"
        "procs = sorted(open(f'/proc/{p}/cmdline').read().split('\\0')[1][:40] for p in os.listdir('/proc')\n"
        "               if p.isdigit() and open(f'/proc/{p}/cmdline').read().startswith('python'))\n"
        "print(IPython.__version__, ipykernel.__version__, blocked, sys.prefix)\nprint(procs)")
    assert r["reply"]["status"] == "ok", r
    first, second = ws.stdout(r).splitlines()
    assert first == f"{pins['ipython']} {pins['ipykernel']} True /opt/kernel"
    assert second == "['-c', '/usr/local/bin/kge-nanny']", second
    # The gateway keeps no control socket open for an idle kernel; a shutdown request opens one.
    assert gateway.app.kernel_manager.get_kernel(kid)._control_socket is None
    ws.close()
    await gateway.client.fetch("DELETE", f"/api/kernels/{kid}")
