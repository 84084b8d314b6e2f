"""What the installed distribution declares: a provisioner name of its own, the extras."""
from __future__ import annotations

import json
from importlib.metadata import distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_provisioner_has_a_name_of_its_own() -> None:
    """gateway_provisioners registers `docker-provisioner`: with both installed, whichever came last
    won. Ours is `kge-docker-provisioner`, and every kernelspec we ship names it."""
    from jupyter_client.provisioning import KernelProvisionerFactory

    ours = {ep.name for ep in distribution("kernel_gateway_ext").entry_points
            if ep.group == "jupyter_client.kernel_provisioners"}
    assert ours == {"kge-docker-provisioner"}
    assert "kge-docker-provisioner" in KernelProvisionerFactory.instance().get_provisioner_entries()
    specs = [json.loads(p.read_text())["metadata"] for p in ROOT.glob("kernelspecs/*/kernel.json")]
    containers = [m["kernel_provisioner"] for m in specs if not m.get("kge_fallback")]  # not the local fallback
    assert containers and all(p["provisioner_name"] == "kge-docker-provisioner" for p in containers)


def test_local_kernels_have_an_extra() -> None:
    requires = distribution("kernel_gateway_ext").requires or []
    assert any(r.startswith("ipykernel") and 'extra == "local"' in r for r in requires), requires


def test_the_benches_run_without_pytest() -> None:
    """The benches run from the gateway's own venv (scripts/start-gateway's), which has no pytest:
    they must not import the test fixtures."""
    import subprocess
    import sys

    for module in ("bench.bench", "bench.load"):
        code = f"import sys; sys.modules['pytest'] = None; import {module}"
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, f"{module}: {proc.stderr[-1500:]}"
