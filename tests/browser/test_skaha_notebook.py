"""A Skaha notebook session as a CANFAR user meets it: made with the real canfar client, its
connectURL opened in headless Chromium (the `?token=` visit), JupyterLab 4 served from the session's
container through the gateway's proxy. A Python notebook runs in the container and is saved into one
of the user's folders, a terminal runs a command, the page is reloaded; the session is deleted, a new
one is made, and the notebook is still there.

Each step leaves a screenshot in test-output/skaha-notebook/ (one is in the README).
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.browser.lab import Lab
from tests.browser.test_page import api
from tests.browser.test_jupyterlab import require_browser
from tests.clients.v2util import Keys, create_keys, run_canfar
from tests.conftest import FIGURES, ProcessGateway, require_docker, start_process_gateway, stop_process_gateway

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "skaha-notebook"
IMAGE = "images.canfar.net/skaha/notebook:latest"
PYTHON = "Python 3 (ipykernel)"


@dataclass
class SessionPage:
    """What Lab needs of a server: the session's connectURL and the owner's token."""

    url: str
    token: str


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessGateway]:
    require_docker()
    require_browser()
    gateway = start_process_gateway(str(tmp_path_factory.mktemp("nb-gw")), "--ip=127.0.0.1", env={"KGE_POOL_SIZES": "{}"})
    yield gateway
    assert stop_process_gateway(gateway) == 0, open(gateway.log_path).read()[-3000:]
    left = docker.from_env().containers.list(all=True, filters={"label": f"org.kge.gateway={gateway.gateway_id}"})
    assert not left, f"the gateway left containers: {[c.short_id for c in left]}"


def new_session(gw: ProcessGateway, keys: Keys, home: Path) -> tuple[str, str]:
    """canfar create notebook …, then wait until it runs: (session id, connectURL)."""
    created = run_canfar(["create", "--name", "lab", "--cpu", "1", "--memory", "2", "notebook", IMAGE], gw.url, keys, str(home))
    sid = created.stdout.split("ID: ")[1].split(")")[0]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        info = api(gw, "GET", f"skaha/v1/session/{sid}", keys.token)[1]
        if info["status"] == "Running":
            return sid, info["connectURL"]
        time.sleep(0.5)
    raise AssertionError(f"session {sid} never ran: {info}")


def open_lab(lab: Lab, connect_url: str, token: str, where: str = "") -> float:
    """The CANFAR click: the connectURL with the owner's token, once; seconds to JupyterLab's launcher."""
    began = time.monotonic()
    lab.driver.get(f"{connect_url}lab{where}?token={token}")
    lab.wait("JupyterLab's launcher", lambda: lab.js("return document.querySelector('.jp-LauncherCard') !== null"), 120)
    assert "token=" not in lab.driver.current_url, "the token visit is redirected away from the token"
    return time.monotonic() - began


def test_a_notebook_session_opens_jupyterlab(gw: ProcessGateway, tmp_path: Path) -> None:
    try:
        drive_a_notebook_session(gw, tmp_path)
    except Exception as e:
        # What the session's JupyterLab said, beside the screenshot the failing step left.
        logs = [c.logs(tail=40).decode(errors="replace") for c in docker.from_env().containers.list(
            all=True, filters={"label": f"org.kge.gateway={gw.gateway_id}"})]
        raise AssertionError(f"{e}\n--- session containers' logs:\n" + "\n---\n".join(logs)
                             + "\n--- gateway log:\n" + open(gw.log_path).read()[-3000:]) from e


def drive_a_notebook_session(gw: ProcessGateway, tmp_path: Path) -> None:
    keys = create_keys("canfar-" + uuid.uuid4().hex[:6])
    assert api(gw, "POST", "v2/folders", keys.token, {"name": "work1"})[0] == 201
    sid, url = new_session(gw, keys, tmp_path)
    lab = Lab(SessionPage(url, keys.token), SHOTS)  # type: ignore[arg-type]
    timings: dict[str, float] = {}
    try:
        timings["open"] = open_lab(lab, url, keys.token, "/tree/work1")
        lab.shot("01-jupyterlab-launcher")
        # The file browser is rooted at /home/work and shows the owner's folder.
        lab.wait("the folder in the file browser", lambda: lab.js(
            "return [...document.querySelectorAll('.jp-BreadCrumbs-item')].some(e => e.textContent.includes('work1'))"))

        # A Python notebook whose kernel runs in the session's container (its websocket through the proxy).
        path, _, timings["kernel idle"] = lab.new_notebook(PYTHON, 120)
        cell = lab.run_cell("import socket, os; print(socket.gethostname()); print(sorted(os.listdir('/home/work')))")
        out = lab.wait_output(cell, "work1", 60)
        (container,) = docker.from_env().containers.list(filters={"label": f"org.kge.session.id={sid}"})
        assert container.attrs["Config"]["Hostname"] in out, out
        # The session's limits hold for the notebook's kernel (it is in the session's cgroup).
        # (cgroup v2 or v1, whichever the host has)
        limits = lab.run_cell("p = lambda *c: open(next(x for x in c if os.path.exists(x))).read().split()[0]; "
                              "print(p('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes'), "
                              "p('/sys/fs/cgroup/cpu.max', '/sys/fs/cgroup/cpu/cpu.cfs_quota_us'))")
        shown = lab.wait_output(limits, " ", 30)
        assert shown.split() == [str(2 * 2**30), "100000"], shown
        lab.shot("02-notebook-cell")
        # Saved into the folder: it outlives the session.
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys as Key

        ActionChains(lab.driver).key_down(Key.CONTROL).send_keys("s").key_up(Key.CONTROL).perform()
        # JupyterLab 4 asks for a name on the first save of an untitled notebook.
        field = lab.wait("the name dialog", lambda: lab._find(".jp-Dialog input"), 10)
        field.send_keys(Key.CONTROL, "a")
        field.send_keys("saved-by-lab.ipynb")
        lab.shot("03-save-dialog")
        lab.click_accept()
        name = "saved-by-lab.ipynb"
        lab.wait("the notebook saved into the folder", lambda: any(
            f["filename"] == name for f in api(gw, "GET", "v2/folders/work1/files", keys.token)[1]["files"]), 30)

        # A terminal, through the proxy's websocket: its command writes into the folder.
        lab.new_launcher()
        lab.wait("the Terminal card", lambda: next((c for c in lab.driver.find_elements(
            "css selector", '.lm-Widget:not(.lm-mod-hidden) > .jp-Launcher .jp-LauncherCard[data-category="Other"]')
            if c.text.strip() == "Terminal" and c.is_displayed()), None)).click()
        screen = lab.wait("the terminal", lambda: lab._find(".jp-Terminal:not(.lm-mod-hidden) .xterm-screen"), 60)
        time.sleep(1.0)  # the shell's prompt
        screen.click()
        ActionChains(lab.driver).send_keys("echo from-the-terminal-$((6*7)) > /home/work/work1/term.txt\n").perform()
        lab.wait("the terminal's file", lambda: any(
            f["filename"] == "term.txt" for f in api(gw, "GET", "v2/folders/work1/files", keys.token)[1]["files"]), 30)
        lab.shot("04-terminal")

        # A reload keeps the session (the cookie the token visit left).
        lab.driver.refresh()
        lab.wait("JupyterLab after the reload", lambda: lab.js(
            "return document.querySelector('.jp-NotebookPanel, .jp-Terminal, .jp-Launcher') !== null"), 90)
        assert "token=" not in lab.driver.current_url
        lab.shot("05-reloaded")
    except Exception:
        lab.shot("FAILED")
        raise
    finally:
        lab.close()

    # Deleted, and a new session finds the notebook in the folder.
    run_canfar(["delete", "--force", sid], gw.url, keys, str(tmp_path))
    assert not docker.from_env().containers.list(all=True, filters={"label": f"org.kge.session.id={sid}"})
    sid2, url2 = new_session(gw, keys, tmp_path)
    lab = Lab(SessionPage(url2, keys.token), SHOTS)  # type: ignore[arg-type]
    try:
        open_lab(lab, url2, keys.token, "/tree/work1")
        lab.wait("the saved notebook in the new session", lambda: lab.js(
            "return [...document.querySelectorAll('.jp-DirListing-itemText')].some(e => e.textContent.includes(arguments[0]))",
            name), 30)
        lab.shot("06-new-session-finds-the-notebook")
        # Another user (or nobody) gets only the refusal at the session's address.
        other = create_keys("other-" + uuid.uuid4().hex[:6])
        lab.driver.delete_all_cookies()
        lab.driver.get(f"{url2}lab?token={other.token}")
        assert "jp-LauncherCard" not in lab.driver.page_source and "not found" in lab.driver.page_source
    finally:
        lab.close()
        run_canfar(["delete", "--force", sid2], gw.url, keys, str(tmp_path))
    FIGURES.append(f"skaha    notebook session: connectURL → JupyterLab launcher {timings['open']:.1f} s, "
                   f"new notebook → Idle {timings['kernel idle']:.1f} s")
