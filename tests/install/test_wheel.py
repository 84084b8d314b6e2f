"""The package as a user installs it: a wheel built from the checkout (through its sdist, as PyPI would
have it), installed into a clean venv with no source tree in reach, builds the images from the build
contexts it ships and runs a kernel."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import docker
import pytest

from tests.conftest import Client, start_process_gateway, stop_process_gateway
from tests.wsclient import KernelWS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.docker


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_a_wheel_in_a_clean_venv_builds_the_images_and_runs_a_kernel(need_docker, tmp_path) -> None:
    run([sys.executable, "-m", "build", "--outdir", str(tmp_path / "dist"), str(ROOT)])
    (wheel,) = (tmp_path / "dist").glob("kernel_gateway_ext-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("kernel_gateway_ext/share/docker/kernel/Dockerfile", "kernel_gateway_ext/share/docker/kernel/kge-nanny",
                    "kernel_gateway_ext/share/docker/base/make-base.sh", "kernel_gateway_ext/share/docker/notebook/Dockerfile",
                    "kernel_gateway_ext/share/kernelspecs/python3/kernel.json",
                    "kernel_gateway_ext/share/kernelspecs/python3-datascience/Dockerfile"):
        assert shipped in names, shipped
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert not any("/wheels/" in n or "__pycache__" in n for n in names)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run([str(venv / "bin" / "python"), "-c",
                 "from kernel_gateway_ext.resources import resource; print(resource('docker'))"],
                cwd=tmp_path, env=env).stdout.strip()
    assert where.startswith(str(venv)), where  # the package's own data, not the checkout

    # Every image rebuilt from the contexts the wheel ships (--force; --base names the local base so it
    # is not made again; the engine's layer cache keeps this quick), then found up to date by the
    # checkout's own build-images: the wheel ships the same files, byte for byte.
    client = docker.from_env(timeout=120)
    out = run([str(venv / "bin" / "kernel-gateway-ext"), "build-images", "--force", "--base=kge-base:bookworm"],
              cwd=tmp_path, env=env).stdout
    for image in ("kge-kernel:latest", "kge-notebook:latest", "kge-datascience:latest"):
        assert f"built {image}" in out, out
    again = run([sys.executable, "-m", "kernel_gateway_ext", "build-images"], cwd=ROOT).stdout
    assert again.count("is up to date") == 3 and "building" not in again.replace("has a Dockerfile: building", ""), again

    gw = start_process_gateway(str(tmp_path), python=str(venv / "bin" / "python"), cwd=str(tmp_path),
                               env={**env, "KGE_POOL_SIZES": "{}", "PYTHONPATH": ""})
    try:
        async def use() -> None:
            c = Client(gw.url, gw.token)
            specs = (await c.fetch("GET", "/api/kernelspecs")).json["kernelspecs"]
            assert {"python3", "bash", "python3-datascience"} <= set(specs), specs
            logo = specs["python3"]["resources"]["logo-64x64"]
            assert (await c.fetch("GET", logo)).status == 200
            r = await c.fetch("POST", "/api/kernels", {"name": "python3"})
            assert r.status == 201, r.body
            ws = await KernelWS.connect(gw.url, r.json["id"], gw.token)
            out = ws.stdout(await ws.execute("import socket; print('from', socket.gethostname()[:7])"))
            ws.close()
            assert out == "from kernel-\n", out  # the container's hostname (kernel-…), not the host's
            assert (await c.fetch("DELETE", f"/api/kernels/{r.json['id']}")).status == 204

        asyncio.run(use())
    finally:
        assert stop_process_gateway(gw) == 0, open(gw.log_path).read()[-3000:]
    log = open(gw.log_path).read()
    assert str(ROOT) not in log, "the installed gateway used the checkout"
    assert not client.containers.list(all=True, filters={"label": f"org.kge.gateway={gw.gateway_id}"})
