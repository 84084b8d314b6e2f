"""The shell scripts, checked from their source: each parses, and none that sets `pipefail` pipes
into a reader that may leave before the writer is done (`grep -q`, `head`). The writer then dies of
SIGPIPE, the pipe fails, and a test like `ip addr show | grep -q ADDR || ip addr add ADDR` takes the
wrong branch: stop 28's CI failed so (`swarm-cluster up`: "Address already assigned")."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Run (a bash shebang) or sourced into those that run (`*.sh`, which inherit their `pipefail`).
SCRIPTS = sorted(p for d in ("scripts", ".ci") for p in (ROOT / d).iterdir() if p.is_file() and (
    p.suffix == ".sh" or p.read_text(errors="replace").startswith("#!/usr/bin/env bash")))
EARLY_EXIT = re.compile(r"\|\s*(grep\s+-[A-Za-z]*q|head\b)")


def test_there_are_scripts() -> None:
    assert {"swarm-cluster", "ha-cluster", "run-tests", "start-gateway", "setup-lib.sh"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_script_parses(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_pipe_into_an_early_exit_under_pipefail(script: Path) -> None:
    text = script.read_text()
    if "pipefail" not in text and script.suffix != ".sh":
        return
    bad = [f"{script.name}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
           if not line.lstrip().startswith("#") and EARLY_EXIT.search(line)]
    assert not bad, "capture the output first, then test it:\n" + "\n".join(bad)


def test_the_check_sees_the_pattern() -> None:
    assert EARLY_EXIT.search('ip addr show dev "$BR" | grep -q "$LINK.1/24" || ip addr add')
    assert EARLY_EXIT.search("docker ps | head -1")
    assert not EARLY_EXIT.search('grep -qiE "^x" <<<"$(curl -s URL)"')
