"""JupyterLab 4 in headless Chromium against a gateway started by the quick start's own command
(`scripts/start-gateway`, default warm pool): what a person at the notebook sees.

Every step is timed; the figures are printed at the end of the run. A failing step leaves a
screenshot (and the page's console) in test-output/browser/.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.browser.lab import Lab, LabServer, browser_problem
from tests.conftest import FIGURES, IN_CI, TOKEN, free_port, new_gateway_id, require_docker, wait_http

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "browser"
PYTHON = "Python 3 (container)"
BASH = "Bash (container)"
DATASCIENCE = "Python 3 (data science)"
DIED = "appears to have died"


def require_browser() -> None:
    problem = browser_problem()
    if problem:
        if IN_CI:
            pytest.fail(f"CI requires the browser test: {problem}")
        pytest.skip(f"!!! SKIPPED, NEEDS A BROWSER: {problem}")


@pytest.fixture(scope="module")
def quickstart_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway as `scripts/start-gateway` starts it (with its default warm pool)."""
    require_docker()
    require_browser()
    workdir = tmp_path_factory.mktemp("quickstart")
    port = free_port()
    gateway_id = new_gateway_id("lab-")
    log_path = workdir / "gateway.log"
    env = {k: v for k, v in os.environ.items() if k != "KGE_POOL_SIZES"}
    env["KGE_VENV"] = sys.prefix
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "start-gateway"), "--ip=127.0.0.1", f"--port={port}",
         f"--auth-token={TOKEN}", f"--gateway-id={gateway_id}"],
        stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    wait_http(url + "api", proc, log_path, timeout=180)
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log_path.read_text()[-3000:]
    left = docker.from_env().containers.list(all=True, filters={"label": f"org.kge.gateway={gateway_id}"})
    assert not left, f"the gateway left containers: {[c.short_id for c in left]}"


@pytest.fixture(scope="module")
def lab(quickstart_gateway: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    server = LabServer.start(quickstart_gateway, TOKEN, tmp_path_factory.mktemp("jupyterlab"))
    browser = Lab(server, SHOTS)
    try:
        browser.open()
        yield browser
    finally:
        browser.close()
        server.stop()


def gateway_kernels(url: str) -> list[str]:
    req = urllib.request.Request(url + "api/kernels", headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        import json

        return [k["id"] for k in json.loads(r.read())]


@contextlib.contextmanager
def step(lab: Lab, name: str) -> Iterator[dict[str, float]]:
    """Time a step; on failure keep a screenshot and the browser console."""
    timing: dict[str, float] = {}
    began = time.monotonic()
    try:
        yield timing
    except BaseException:
        shot = lab.shot(f"FAILED-{name}")
        with contextlib.suppress(Exception):
            shot.with_suffix(".console.txt").write_text(
                "\n".join(f"{e['level']} {e['message']}" for e in lab.driver.get_log("browser")))
            shot = shot.with_suffix(".png")
        FIGURES.append(f"browser  {name:<44} FAILED (screenshot: {shot})")
        raise
    seconds = timing.get("figure", time.monotonic() - began)
    FIGURES.append(f"browser  {name:<44} {seconds:7.2f} s{timing.get('note', '')}")


def no_died_dialog_for(lab: Lab, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert DIED not in lab.dialog(), f"unexpected dialog: {lab.dialog()!r}"
        time.sleep(0.05)


def test_a_python_notebook_through_the_gateway(lab: Lab, quickstart_gateway: str) -> None:
    with step(lab, "new notebook: click -> Idle") as t:
        path, clicked, t["figure"] = lab.new_notebook(PYTHON)
    with step(lab, "new notebook: click -> first output") as t:
        cell = lab.run_cell("import socket; print(socket.gethostname())")
        hostname = lab.wait_output(cell).strip()
        t["figure"] = time.monotonic() - clicked
        t["note"] = f"  (kernel hostname {hostname})"
        assert hostname and hostname != socket.gethostname()
    kernel_id = lab.server.kernel_of(path)
    assert kernel_id in gateway_kernels(quickstart_gateway)

    with step(lab, "set a variable"):
        assert lab.wait_output(lab.run_cell("x = 42; print(x)")).strip() == "42"

    with step(lab, "Kernel > Restart: confirmed -> Idle") as t:
        lab.menu("Kernel", "kernelmenu:restart")
        assert "Restart Kernel?" in lab.wait("the restart dialog", lab.dialog, 10)
        began = time.monotonic()
        lab.accept("Restart")
        lab.wait_status("Idle", 30)
        t["figure"] = time.monotonic() - began
        no_died_dialog_for(lab, 2.0)
        assert lab.server.kernel_of(path) == kernel_id, "restart changed the kernel id"
        assert lab.wait_output(lab.run_cell("print('x' in dir())")).strip() == "False"

    with step(lab, "Kernel > Interrupt a time.sleep(30)") as t:
        cell = lab.run_cell("import time; time.sleep(30)")
        lab.wait_status("Busy", 10)
        began = time.monotonic()
        lab.menu("Kernel", "kernelmenu:interrupt")
        assert "KeyboardInterrupt" in lab.wait_output(cell, "KeyboardInterrupt", 15)
        t["figure"] = time.monotonic() - began
        lab.wait_status("Idle", 10)

    with step(lab, "container killed: died dialog once -> Idle") as t:
        assert lab.wait_output(lab.run_cell("y = 1; print(y)")).strip() == "1"
        (container,) = docker.from_env().containers.list(filters={"label": f"org.kge.kernel.id={kernel_id}"})
        began = time.monotonic()
        container.kill()
        assert DIED in lab.wait("the died dialog", lab.dialog, 30)
        lab.accept("Ok")
        lab.wait_status("Idle", 30)
        t["figure"] = time.monotonic() - began
        no_died_dialog_for(lab, 3.0)
        assert lab.server.kernel_of(path) == kernel_id
        assert lab.wait_output(lab.run_cell("print('y' in dir())")).strip() == "False"

    with step(lab, "reload during a running cell -> reconnected") as t:
        cell = lab.run_cell("exec('import time\\nfor i in range(12): print(\"tick\", i, flush=True); time.sleep(0.5)')")
        lab.wait_output(cell, "tick 2", 15)
        began = time.monotonic()
        lab.reload()
        lab.wait("the notebook's kernel after the reload", lambda: lab.status() in ("Busy", "Idle"), 30)
        t["figure"] = time.monotonic() - began
        assert lab.server.kernel_of(path) == kernel_id, "the reload lost the kernel"
        lab.wait_status("Idle", 30)  # the cell ran to its end behind the reload
        assert lab.wait_output(lab.run_cell("print(i)")).strip() == "11"

    with step(lab, "Kernel > Shut Down -> gone from the gateway") as t:
        began = time.monotonic()  # includes confirming the dialog, if one is asked
        lab.menu("Kernel", "kernelmenu:shutdown")
        gone = lambda: kernel_id not in gateway_kernels(quickstart_gateway)  # noqa: E731
        if lab.wait("a confirmation or the kernel gone", lambda: "dialog" if lab.dialog() else gone(), 20) == "dialog":
            lab.accept("Shut Down")
        lab.wait("the kernel to leave the gateway", gone, 20)
        assert lab.wait("the notebook to say so", lambda: "No Kernel" in " ".join(lab.status_bar()[1]), 10)
        t["figure"] = time.monotonic() - began


def test_a_bash_notebook(lab: Lab) -> None:
    with step(lab, "bash notebook: click -> first output") as t:
        _, clicked, _ = lab.new_notebook(BASH)
        cell = lab.run_cell("echo hello from $(whoami) in $PWD")
        assert lab.wait_output(cell, "hello").strip() == "hello from work in /home/work"
        t["figure"] = time.monotonic() - clicked


def test_a_data_science_notebook_plots_inline(lab: Lab) -> None:
    with step(lab, "data-science notebook: click -> inline plot") as t:
        _, clicked, _ = lab.new_notebook(DATASCIENCE)
        # one line (run_cell types one): pandas draws with matplotlib; the figure shows as an image
        cell = lab.run_cell("import pandas as pd; pd.Series([1, 3, 2]).plot(title='inline'); "
                            "import matplotlib.pyplot as plt; plt.show()")
        img = lab.wait("an inline plot", lambda: cell.find_elements("css selector", ".jp-RenderedImage img"), 120)[0]
        assert lab.js("return arguments[0].naturalWidth", img) > 100
        assert lab.js("return arguments[0].src", img).startswith("data:image/png;base64,")
        t["figure"] = time.monotonic() - clicked


def test_ten_new_notebooks_in_a_row_each_connect_and_run(lab: Lab) -> None:
    idle, output = [], []
    for n in range(10):
        with step(lab, f"notebook {n + 1}/10: click -> first output") as t:
            _, clicked, to_idle = lab.new_notebook(PYTHON)
            assert lab.wait_output(lab.run_cell(f"print({n} * {n})")).strip() == str(n * n)
            t["figure"] = time.monotonic() - clicked
            idle.append(to_idle)
            output.append(t["figure"])
    idle.sort()
    output.sort()
    FIGURES.append(f"browser  10 new notebooks: click -> Idle median {idle[4]:.2f} s, max {idle[-1]:.2f} s; "
                   f"click -> output median {output[4]:.2f} s, max {output[-1]:.2f} s")
