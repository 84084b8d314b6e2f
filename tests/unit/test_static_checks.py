"""The linter (ruff) and the type checker (mypy), both configured in pyproject.toml, find nothing, in
CI as locally."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]


def run_tool(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a tool of the [test] extra from the suite's venv (fails in CI when missing, skips loudly here)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed (it is in the [test] extra)")
        pytest.skip(f"!!! SKIPPED: {name} is not installed (pip install -e '.[test]')")
    return subprocess.run([found, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_ruff_is_clean() -> None:
    proc = run_tool("ruff", "check", "kernel_gateway_ext", "tests", "bench", timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_is_clean() -> None:
    # The packages and options come from [tool.mypy] in pyproject.toml; no cache is written to the tree.
    proc = run_tool("mypy", "--cache-dir", "/dev/null", timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
