"""Run the real Backend.AI clients (each in its own venv, .venv-clients/) against a gateway."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
VENVS = Path(os.environ.get("KGE_CLIENT_VENVS", ROOT / ".venv-clients"))


@dataclass(frozen=True)
class Keys:
    access_key: str
    secret_key: str
    user: str

    @property
    def token(self) -> str:
        return f"{self.access_key}:{self.secret_key}"


def create_keys(user: str, admin: bool = False) -> Keys:
    out = subprocess.run([sys.executable, "-m", "kernel_gateway_ext", "keys", "create", f"--user={user}", "--json",
                          *(["--admin"] if admin else [])], capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    return Keys(d["access_key"], d["secret_key"], user)


def venv(name: str) -> Path:
    path = VENVS / name
    if not (path / "bin" / "python").exists():
        msg = f"client venv {path} missing: run scripts/run-tests (it installs the real clients)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip("!!! SKIPPED: " + msg)
    return path


def client_env(url: str, keys: Keys, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKEND_", "SORNA_"))}
    env.update(BACKEND_ENDPOINT=url, BACKEND_ACCESS_KEY=keys.access_key, BACKEND_SECRET_KEY=keys.secret_key,
               SORNA_ENDPOINT=url, SORNA_ACCESS_KEY=keys.access_key, SORNA_SECRET_KEY=keys.secret_key, **extra)
    return env


def run_py(client: str, code: str, url: str, keys: Keys, timeout: float = 180, **extra: str) -> Any:  # noqa: D401
    """Run `code` with the client's Python; it prints one JSON document, which is returned."""
    proc = subprocess.run([str(venv(client) / "bin" / "python"), "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, env=client_env(url, keys, **extra))
    assert proc.returncode == 0, f"{client} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cli(args: list[str], url: str, keys: Keys, timeout: float = 180, check: bool = True,
            client: str = "bai-1.4.2", cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(venv(client) / "bin" / "backend.ai"), *args], capture_output=True, text=True,
                          timeout=timeout, env=client_env(url, keys), cwd=cwd)
    if check:
        assert proc.returncode == 0, f"backend.ai {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def run_canfar(args: list[str], url: str, keys: Keys, home: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The canfar CLI, configured by CANFAR_URL / CANFAR_TOKEN, with its own HOME."""
    env = client_env(url, keys, CANFAR_URL=url.rstrip("/") + "/skaha/v1", CANFAR_TOKEN=keys.token, HOME=home,
                     COLUMNS="200", NO_COLOR="1")
    proc = subprocess.run([str(venv("canfar-1.5.2") / "bin" / "canfar"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, f"canfar {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc
