"""Kernels people do data work in: the data-science kernelspec (numpy, pandas, scipy, matplotlib with
inline plots, pip installs that persist in the user's folder), and an operator's own kernel image (R,
from examples/kernelspecs) built by build-images and run like ours."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path

from tests.api.test_v2_auth_and_input import signed
from tests.clients.v2util import Keys, create_keys
from tests.conftest import TOKEN
from tests.wsclient import KernelWS

ROOT = Path(__file__).resolve().parents[2]

TINY_WHEEL = '''
import zipfile
files = {"tinypkg.py": "VALUE = 6 * 7\\n",
         "tinypkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\\nName: tinypkg\\nVersion: 0.1\\n",
         "tinypkg-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
with zipfile.ZipFile("/tmp/tinypkg-0.1-py3-none-any.whl", "w") as z:
    for name, text in files.items():
        z.writestr(name, text)
    z.writestr("tinypkg-0.1.dist-info/RECORD", "".join(n + ",,\\n" for n in files) + "tinypkg-0.1.dist-info/RECORD,,\\n")
'''


async def v2(gateway, keys: Keys, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    return await signed(gateway, keys, method, path, json.dumps(body).encode() if body is not None else b"")


async def query(gateway, keys: Keys, token: str, code: str) -> dict:
    status, out = await v2(gateway, keys, "POST", f"/v2/kernel/{token}", {"mode": "query", "code": code, "runId": None})
    assert status == 200, out
    result = out["result"]
    while result["status"] == "continued":
        status, out = await v2(gateway, keys, "POST", f"/v2/kernel/{token}",
                               {"mode": "continue", "code": "", "runId": result["runId"]})
        result = out["result"]
    return result


def text(result: dict, stream: str = "stdout") -> str:
    return "".join(i[1] for i in result["console"] if i[0] == stream)


async def test_data_science_kernel_plots_inline_and_pip_installs_persist_in_a_folder(gateway) -> None:
    keys = create_keys("ds-" + uuid.uuid4().hex[:6])
    assert (await v2(gateway, keys, "POST", "/v2/folders/", {"name": "pkgs"}))[0] == 201
    create = {"lang": "python3-datascience", "clientSessionToken": "ds-1", "config": {"mounts": ["pkgs:.local"]}}
    assert (await v2(gateway, keys, "POST", "/v2/kernel/create", create))[0] == 201
    out = await query(gateway, keys, "ds-1", "import numpy, pandas, scipy, matplotlib\n"
                      "print(pandas.DataFrame({'a': numpy.arange(3)}).a.sum(), scipy.__name__, matplotlib.get_backend())")
    assert text(out) == "3 scipy module://matplotlib_inline.backend_inline\n", out

    # An inline plot reaches a Jupyter client as a PNG, as JupyterLab shows it.
    kid = gateway.app.kernel_manager.get_by_id_or_token("ds-1").kernel_id
    ws = await KernelWS.connect(gateway.url, kid, keys.token)
    try:
        plot = await ws.execute("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()", timeout=120)
    finally:
        ws.close()
    pngs = [o["data"]["image/png"] for o in plot["outputs"] if o["type"] == "display_data" and "image/png" in o["data"]]
    assert pngs and base64.b64decode(pngs[0]).startswith(b"\x89PNG"), plot["outputs"]

    # %pip installs into the user's site, the mounted folder, without touching the image.
    await query(gateway, keys, "ds-1", TINY_WHEEL)
    out = await query(gateway, keys, "ds-1", "%pip install --no-index /tmp/tinypkg-0.1-py3-none-any.whl")
    assert "Successfully installed tinypkg-0.1" in text(out), out
    assert (await v2(gateway, keys, "DELETE", "/v2/kernel/ds-1"))[0] == 200
    # a new kernel with the same folder has it
    assert (await v2(gateway, keys, "POST", "/v2/kernel/create", {**create, "clientSessionToken": "ds-2"}))[0] == 201
    out = await query(gateway, keys, "ds-2", "import tinypkg; print(tinypkg.VALUE, tinypkg.__file__)")
    assert text(out) == "42 /home/work/.local/lib/python3.11/site-packages/tinypkg.py\n", out
    # and a kernel without it does not: nothing was installed into the image
    plain = {"lang": "python3-datascience", "clientSessionToken": "ds-3"}
    assert (await v2(gateway, keys, "POST", "/v2/kernel/create", plain))[0] == 201
    out = await query(gateway, keys, "ds-3", "import tinypkg")
    assert "ModuleNotFoundError" in text(out, "stderr") + json.dumps(out), out
    for token in ("ds-2", "ds-3"):
        await v2(gateway, keys, "DELETE", f"/v2/kernel/{token}")


async def test_an_operators_own_r_kernel_is_built_and_runs_like_ours(make_gateway, docker_client) -> None:
    specs = ROOT / "examples" / "kernelspecs"
    build = subprocess.run([sys.executable, "-m", "kernel_gateway_ext", "build-images", f"--kernelspec-dirs={specs}"],
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "kernelspec ir has a Dockerfile" in build.stdout
    image = docker_client.images.get("kge-example-r:latest")
    assert image.labels["org.kge.languages"] == "R"
    async with make_gateway(f"--GatewayKernelSpecManager.extra_kernelspec_dirs={specs}") as gw:
        specs_model = (await gw.client.fetch("GET", "/api/kernelspecs")).json["kernelspecs"]
        assert specs_model["ir"]["spec"]["language"] == "R"
        r = await gw.client.fetch("POST", "/api/kernels", {"name": "ir"})
        assert r.status == 201, r.body
        kid = r.json["id"]
        (container,) = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={kid}"})
        assert container.attrs["HostConfig"]["CapDrop"] == ["ALL"] and container.attrs["Config"]["User"] == "1000:1000"
        ws = await KernelWS.connect(gw.url, kid, TOKEN)
        try:
            assert ws.stdout(await ws.execute("cat(6 * 7, Sys.info()[['user']])")) == "42 work"
            # restart keeps the container (kge-nanny supervises R as it does Python)
            assert (await gw.client.fetch("POST", f"/api/kernels/{kid}/restart")).status == 200
            assert ws.stdout(await ws.execute("cat(exists('x'), 1 + 1)")) == "FALSE 2"
        finally:
            ws.close()
        assert docker_client.containers.get(container.id).status == "running"
        assert (await gw.client.fetch("DELETE", f"/api/kernels/{kid}")).status == 204
