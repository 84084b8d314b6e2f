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


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        if IN_CI:
            pytest.fail("ruff is not installed (it is in the [test] extra)")
        pytest.skip("!!! SKIPPED: ruff is not installed (pip install -e '.[test]')")
    proc = subprocess.run([ruff, "check", "kernel_gateway_ext", "tests", "bench"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_is_clean() -> None:
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    if mypy is None:
        if IN_CI:
            pytest.fail("mypy is not installed (it is in the [test] extra)")
        pytest.skip("!!! SKIPPED: mypy is not installed (pip install -e '.[test]')")
    # The packages and options come from [tool.mypy] in pyproject.toml; no cache is written to the tree.
    proc = subprocess.run([mypy, "--cache-dir", "/dev/null"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
