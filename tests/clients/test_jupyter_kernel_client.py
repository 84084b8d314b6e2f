"""jupyter-kernel-client 1.0.2 (a real PyPI client) against the gateway process."""
from __future__ import annotations

import pytest
from jupyter_kernel_client import JupyterKernelClient

from tests.conftest import ProcessGateway

pytestmark = pytest.mark.clients


def test_execute_and_restart(process_gateway: ProcessGateway) -> None:
    with JupyterKernelClient(server_url=process_gateway.url.rstrip("/"), token=process_gateway.token) as kernel:
        reply = kernel.execute("x = [1, 2, 3]\nprint(sum(x))\nlen(x)")
        assert reply["status"] == "ok"
        assert reply["outputs"][0]["text"] == "6\n"
        assert reply["outputs"][1]["data"]["text/plain"] == "3"
        assert kernel.execute("greeting = 'hello'\nprint(greeting.upper())")["outputs"][0]["text"] == "HELLO\n"
        assert kernel.execution_state == "idle"
        kernel.restart()
        reply = kernel.execute("print('x' in dir())")
        assert reply["outputs"][0]["text"] == "False\n"
    # the client shut its kernel down on exit
    import json
    import urllib.request

    req = urllib.request.Request(process_gateway.url + "api/kernels", headers={"Authorization": f"token {process_gateway.token}"})
    assert json.load(urllib.request.urlopen(req)) == []
