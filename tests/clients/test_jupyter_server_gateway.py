"""A real jupyter_server started with --gateway-url against our gateway (what JupyterLab uses),
and nbclient running a notebook through that jupyter_server.

The jupyter_server here is a loopback notebook server without its own token: nbclient reaches it
with jupyter_server's GatewayKernelManager, whose GatewayKernelClient sends no credentials on its
websocket (an upstream gap). Our gateway behind it still requires its token, which jupyter_server
supplies (--GatewayClient.auth_token) on every request and websocket it relays.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import Client, ProcessGateway, jupyter_server_with_gateway
from tests.wsclient import KernelWS

pytestmark = pytest.mark.clients
JS_TOKEN = None  # see the module docstring


@pytest.fixture(scope="module")
def jupyter_server(process_gateway: ProcessGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("js-root")
    with jupyter_server_with_gateway(root, process_gateway.url, process_gateway.token,
                                     env={"KERNEL_USERNAME": "nbuser"}) as url:
        yield url


async def test_kernelspecs_and_logos_through_jupyter_server(jupyter_server: str) -> None:
    js = Client(jupyter_server, JS_TOKEN)
    r = await js.fetch("GET", "/api/kernelspecs")
    assert r.status == 200, r.body
    assert r.json["default"] == "python3" and {"python3", "bash"} <= set(r.json["kernelspecs"])
    logo = r.json["kernelspecs"]["python3"]["resources"]["logo-64x64"]
    img = await js.fetch("GET", logo)
    assert img.status == 200 and img.body.startswith(b"\x89PNG")


async def test_notebook_ui_flow_through_jupyter_server(jupyter_server: str, process_gateway: ProcessGateway) -> None:
    js = Client(jupyter_server, JS_TOKEN)
    gw = Client(process_gateway.url, process_gateway.token)
    r = await js.fetch("POST", "/api/sessions", {"path": "nb.ipynb", "type": "notebook", "name": "nb.ipynb",
                                                  "kernel": {"name": "python3"}})
    assert r.status == 201, r.body
    kid = r.json["kernel"]["id"]
    assert kid in [k["id"] for k in (await gw.fetch("GET", "/api/kernels")).json]  # it lives in our gateway

    ws = await KernelWS.connect(jupyter_server, kid, JS_TOKEN)
    r = await ws.execute("import os\nv = 41 + 1\nprint(v, os.environ.get('KERNEL_USERNAME'))")
    assert ws.stdout(r) == "42 nbuser\n"
    r = await ws.execute("print(input('? ') * 2)", stdin="ab")
    assert "abab" in ws.stdout(r)

    running = asyncio.ensure_future(ws.execute("import time\nwhile True: time.sleep(0.05)"))
    await asyncio.sleep(1.0)
    assert (await js.fetch("POST", f"/api/kernels/{kid}/interrupt", {})).status == 204
    r = await asyncio.wait_for(running, 30)
    assert r["reply"]["ename"] == "KeyboardInterrupt"

    r = await js.fetch("POST", f"/api/kernels/{kid}/restart", {})
    assert r.status == 200 and r.json["id"] == kid
    r = await ws.execute("print('v' in dir())")  # the same websocket, through jupyter_server
    assert ws.stdout(r) == "False\n"
    ws.close()

    sessions = (await js.fetch("GET", "/api/sessions")).json
    (sid,) = [s["id"] for s in sessions if s["kernel"]["id"] == kid]
    assert (await js.fetch("DELETE", f"/api/sessions/{sid}")).status == 204
    for _ in range(50):
        if kid not in [k["id"] for k in (await gw.fetch("GET", "/api/kernels")).json]:
            break
        await asyncio.sleep(0.1)
    assert kid not in [k["id"] for k in (await gw.fetch("GET", "/api/kernels")).json]


async def test_nbclient_runs_a_notebook_through_jupyter_server(jupyter_server: str, process_gateway: ProcessGateway) -> None:
    from jupyter_server.gateway.gateway_client import GatewayClient
    from jupyter_server.gateway.managers import GatewayKernelManager

    GatewayClient.clear_instance()
    GatewayClient.instance(url=jupyter_server, request_timeout=60)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import sys, os\nx = 21 * 2\nprint(x)"),
        nbformat.v4.new_code_cell("from IPython.display import Markdown\nMarkdown('**bold**')"),
        nbformat.v4.new_code_cell("os.getuid(), os.getcwd()"),
    ]
    km = GatewayKernelManager(kernel_name="python3")
    client = NotebookClient(nb, km=km, timeout=60, kernel_name="python3")
    await client.async_execute()
    assert nb.cells[0].outputs[0]["text"] == "42\n"
    assert nb.cells[1].outputs[0]["data"]["text/markdown"] == "**bold**"
    assert nb.cells[2].outputs[0]["data"]["text/plain"] == "(1000, '/home/work')"
    # A km handed to nbclient is the caller's to shut down; it goes from our gateway too.
    kid = km.kernel_id
    gw = Client(process_gateway.url, process_gateway.token)
    assert kid in [k["id"] for k in (await gw.fetch("GET", "/api/kernels")).json]
    await km.shutdown_kernel()
    assert kid not in [k["id"] for k in (await gw.fetch("GET", "/api/kernels")).json]
    GatewayClient.clear_instance()
