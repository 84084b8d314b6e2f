"""Two ways the parts are used outside the happy path:
- no Docker engine: the gateway warns loudly and runs the local fallback kernelspec;
- a plain jupyter_server (no gateway) runs our container kernelspecs through the provisioner
  entry point."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import docker
import pytest

from kernel_gateway_ext.kernels.specs import bundled_kernelspec_dir
from tests.conftest import TOKEN, Client, free_port, new_gateway_id, wait_http
from tests.wsclient import KernelWS


async def test_without_docker_the_local_fallback_runs_with_a_warning(monkeypatch) -> None:
    from kernel_gateway_ext.app import Gateway

    monkeypatch.setenv("GATEWAY_SECRET", "must-not-reach-the-kernel")
    app = Gateway()
    app.initialize(["--port=0", f"--auth-token={TOKEN}", "--DockerEngine.docker_url=unix:///nonexistent/docker.sock",
                    "--log-level=ERROR", "--local-kernels"])
    await app.start_server()
    try:
        c = Client(app.url)
        api = (await c.fetch("GET", "/api")).json
        assert api["docker"] is False and any("LOCAL PROCESSES" in w for w in api["warnings"])
        specs = (await c.fetch("GET", "/api/kernelspecs")).json
        assert list(specs["kernelspecs"]) == ["python3-local"] and specs["default"] == "python3-local"
        r = await c.fetch("POST", "/api/kernels", {"env": {"KERNEL_USERNAME": "x"}})
        assert r.status == 201, r.body
        ws = await KernelWS.connect(app.url, r.json["id"], TOKEN)
        out = ws.stdout(await ws.execute("import os; print(os.environ.get('GATEWAY_SECRET'), os.environ.get('KERNEL_USERNAME'))"))
        assert out == "None x\n"
        ws.close()
        assert (await c.fetch("DELETE", f"/api/kernels/{r.json['id']}")).status == 204
        # A key-pair user never gets a local process (it runs as the gateway's user: its state, its key).
        from tests.clients.v2util import create_keys

        keys = create_keys("local-" + TOKEN[-6:])
        r = await Client(app.url, keys.token).fetch("POST", "/api/kernels", {})
        assert r.status == 403 and "local-process kernels serve only" in r.json["message"], r.body
        assert (await Client(app.url, keys.token).fetch("GET", "/api/kernels")).json == []
    finally:
        await app.stop_server()


@pytest.mark.parametrize("flags", [[], ["--require-docker"], ["--require-docker", "--local-kernels"]])
def test_without_an_engine_it_refuses_to_start_unless_local_kernels_are_asked_for(flags) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kernel_gateway_ext", f"--port={free_port()}", "--auth-token=x", *flags,
         "--DockerEngine.docker_url=unix:///nonexistent/docker.sock"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0 and "no Docker engine" in (proc.stdout + proc.stderr)


async def test_plain_jupyter_server_runs_our_container_kernelspec(need_docker, tmp_path) -> None:
    kernels = tmp_path / "share" / "jupyter" / "kernels"
    shutil.copytree(os.path.join(bundled_kernelspec_dir(), "python3"), kernels / "python3-docker")
    port = free_port()
    gateway_id = new_gateway_id("plain-js-")
    env = {**os.environ, "JUPYTER_PATH": str(tmp_path / "share" / "jupyter"), "KGE_GATEWAY_ID": gateway_id}
    log = open(tmp_path / "js.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1", "--no-browser", "--allow-root",
         "--IdentityProvider.token=plain", f"--ServerApp.root_dir={tmp_path}"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/api", proc, tmp_path / "js.log")
        c = Client(url, "plain")
        r = await c.fetch("POST", "/api/kernels", {"name": "python3-docker"}, headers={"X-XSRFToken": "x", "Cookie": "_xsrf=x"})
        assert r.status == 201, r.body
        kid = r.json["id"]
        (container,) = docker.from_env().containers.list(filters={"label": f"org.kge.kernel.id={kid}"})
        assert container.labels["org.kge.gateway"] == gateway_id
        ws = await KernelWS.connect(url, kid, "plain")
        assert ws.stdout(await ws.execute("import os; print(os.getuid())")) == "1000\n"
        ws.close()
        r = await c.fetch("DELETE", f"/api/kernels/{kid}", headers={"X-XSRFToken": "x", "Cookie": "_xsrf=x"})
        assert r.status == 204
        assert not docker.from_env().containers.list(all=True, filters={"label": f"org.kge.kernel.id={kid}"})
    finally:
        proc.terminate()
        proc.wait(30)
        for c in docker.from_env().containers.list(all=True, filters={"label": f"org.kge.gateway={gateway_id}"}):
            c.remove(force=True)
            pytest.fail("jupyter_server left a container")
