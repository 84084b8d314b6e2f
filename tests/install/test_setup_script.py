"""The set-up script on a Debian that lacks what `python3 -m venv` needs (python3-venv): it installs
it. Run in the locally made Debian base image with its python3-venv removed first (the kernels need
it, so the base has it since the kernel stack moved to a venv; a fresh Debian has python3 alone)."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.docker


def test_setup_installs_python3_venv_on_a_fresh_debian(need_docker, docker_client) -> None:
    script = """
        set -e
        venvs=$(dpkg-query -W -f '${Package} ' 'python3*-venv' 2>/dev/null || true)
        [ -z "$venvs" ] || apt-get remove -y -qq $venvs >/dev/null
        if python3 -c 'import ensurepip' 2>/dev/null; then echo 'ensurepip already there'; exit 3; fi
        python3 -m venv /tmp/before >/dev/null 2>&1 && { echo 'venv worked before'; exit 4; }
        source /kge/scripts/setup-lib.sh
        ensure_python_venv
        python3 -m venv /tmp/v && /tmp/v/bin/python -m pip --version
    """
    out = docker_client.containers.run(
        "kge-base:bookworm", ["bash", "-c", script], user="root", remove=True,
        volumes={str(ROOT / "scripts"): {"bind": "/kge/scripts", "mode": "ro"}},
    ).decode()
    assert "/tmp/v/lib/python3" in out, out
