"""JupyterLab in headless Chromium, as a person uses it: a real JupyterLab server started with
`--gateway-url`, Debian's chromium and chromedriver driven by selenium, clicks on the launcher
and the menus, keys typed into cells. Shared by the browser test and bench/browser.py."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import free_port, wait_http

CHROMIUM = os.environ.get("KGE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("KGE_CHROMEDRIVER", "/usr/bin/chromedriver")
# Chromium as root in a closed network: no sandbox, no background connections (refused here).
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,900"]
T = TypeVar("T")


def browser_problem() -> str | None:
    """Why no browser test can run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} missing (Debian's chromium and chromium-driver; scripts/run-tests installs them)"
    try:
        import jupyterlab  # noqa: F401
        import selenium  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed in this venv (pip install -e .[test])"
    return None


@dataclass
class LabServer:
    """A JupyterLab server whose kernels live on a gateway (`--gateway-url`)."""

    url: str
    token: str
    root: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, gateway_url: str, gateway_token: str, workdir: Path, timeout: float = 90) -> "LabServer":
        root = workdir / "notebooks"
        root.mkdir(parents=True, exist_ok=True)
        settings = workdir / "lab-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        # No "would you like news?" toast over the page (it would fetch from the internet).
        (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        port = free_port()
        token = "lab-" + os.urandom(8).hex()
        log_path = workdir / f"jupyterlab-{port}.log"
        # Settings and workspaces of its own: never the user's, never an earlier run's open tabs.
        env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(workdir / "lab-settings"),
               "JUPYTERLAB_WORKSPACES_DIR": str(workdir / "workspaces"),
               "JUPYTER_RUNTIME_DIR": str(workdir / "runtime")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", f"--port={port}", "--ip=127.0.0.1", "--no-browser", "--allow-root",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
             f"--gateway-url={gateway_url.rstrip('/')}", f"--GatewayClient.auth_token={gateway_token}",
             "--GatewayClient.request_timeout=60", "--LabApp.news_url=",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env,
        )
        url = f"http://127.0.0.1:{port}/"
        wait_http(f"{url}api/status?token={token}", proc, log_path, timeout)
        return cls(url, token, root, proc, log_path)

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path.lstrip('/')}?token={self.token}", timeout=30) as r:
            return json.loads(r.read())

    def kernel_of(self, notebook: str) -> str | None:
        for s in self.api("api/sessions"):
            if s.get("path") == notebook:
                return str(s["kernel"]["id"])
        return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Browser:
    """One headless Chromium window (selenium), screenshots into `shots`."""

    def __init__(self, shots: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)
        self.profile = tempfile.mkdtemp(prefix="kge-chromium-")
        opts = webdriver.ChromeOptions()
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}"):
            opts.add_argument(flag)
        opts.binary_location = CHROMIUM
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.driver.set_script_timeout(30)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    # ---- waiting ------------------------------------------------------------------------------
    @staticmethod
    def wait(what: str, probe: Callable[[], T | None], timeout: float = 30, every: float = 0.05) -> T:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = probe()
            except Exception:  # noqa: BLE001 - the page is changing under us; try again
                got = None
            if got:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(every)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def shot(self, name: str) -> Path:
        path = self.shots / (re.sub(r"[^\w.-]+", "_", name) + ".png")
        self.driver.save_screenshot(str(path))
        return path

    def _find(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        found = [e for e in self.driver.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()]
        return found[0] if found else None


class Lab(Browser):
    """One Chromium window on a LabServer."""

    def __init__(self, server: LabServer, shots: Path) -> None:
        super().__init__(shots)
        self.server = server

    # ---- pages and launcher -------------------------------------------------------------------
    def open(self) -> None:
        self.driver.get(f"{self.server.url}lab?token={self.server.token}")
        self.wait("the launcher", lambda: self.js("return document.querySelector('.jp-LauncherCard') !== null"), 90)

    def reload(self) -> None:
        self.driver.refresh()
        self.wait("JupyterLab after reload", lambda: self.js(
            "return document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell') !== null"), 90)

    def new_launcher(self) -> None:
        self.menu("File", "launcher:create")
        self.wait("a launcher", lambda: self.js(
            "return document.querySelector('.jp-Launcher:not(.lm-mod-hidden) .jp-LauncherCard') !== null"))

    def click_card(self, title: str, category: str = "Notebook") -> float:
        """Click a launcher card; the monotonic time of the click."""
        selector = f'.lm-Widget:not(.lm-mod-hidden) > .jp-Launcher .jp-LauncherCard[data-category="{category}"][title="{title}"]'
        card = self.wait(f"launcher card {title!r}", lambda: self._find(selector))
        clicked = time.monotonic()
        card.click()
        return clicked

    # ---- the current notebook -----------------------------------------------------------------
    CURRENT = ".jp-NotebookPanel:not(.lm-mod-hidden)"

    def notebook_path(self) -> str:
        return str(self.wait("the notebook's name", lambda: self.js(
            "const t = document.querySelector('.lm-DockPanel-tabBar .lm-TabBar-tab.jp-mod-current .lm-TabBar-tabLabel');"
            "return t && t.textContent")))

    def status(self) -> str:
        """The kernel status the status bar shows for the current notebook ('' when none).
        (Not the toolbar's circle: its model starts out 'idle' before any kernel exists.)"""
        return str(self.status_bar()[0])

    def status_bar(self) -> tuple[str, list[str]]:
        texts = self.js("return [...document.querySelectorAll('.jp-StatusBar-Item')].map(e => e.textContent)") or []
        kernel = next((t for t in texts if " | " in t), "")
        return kernel.rpartition(" | ")[2].strip(), [t.strip() for t in texts]

    def wait_status(self, want: str, timeout: float = 60, path: str | None = None) -> float:
        """Wait until the status bar shows `want` (for the notebook `path`, when given: the status
        bar also names the current document, so a stale status of the previous one never counts)."""
        began = time.monotonic()

        def shown() -> bool:
            status, texts = self.status_bar()
            return status == want and (path is None or path in texts)

        self.wait(f"kernel status {want!r} (now {self.status()!r})", shown, timeout)
        return time.monotonic() - began

    def open_notebooks(self) -> list[str]:
        return list(self.js("return [...document.querySelectorAll('.lm-DockPanel-tabBar .lm-TabBar-tabLabel')]"
                            ".map(e => e.textContent).filter(t => t.endsWith('.ipynb'))") or [])

    def new_notebook(self, title: str, timeout: float = 60) -> tuple[str, float, float]:
        """Open a new notebook from a new launcher and wait until its kernel is Idle: its path,
        the monotonic time of the click on the card, and seconds from the click to Idle."""
        before = set(self.open_notebooks())
        self.new_launcher()
        clicked = self.click_card(title)

        def new_tab() -> str | None:
            path = self.notebook_path()
            return path if path.endswith(".ipynb") and path not in before else None

        path = str(self.wait("the new notebook's tab", new_tab, timeout))
        self.wait_status("Idle", timeout, path=path)
        return path, clicked, time.monotonic() - clicked

    def run_cell(self, code: str) -> Any:
        """Type `code` (one line) into the last cell of the current notebook and press
        Shift+Enter; the executed cell's element."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        def click_last_editor() -> Any:
            editors = self.driver.find_elements("css selector", f"{self.CURRENT} .jp-Notebook .jp-Cell .cm-content")
            if not editors:
                return None
            editors[-1].click()  # may go stale while the notebook renders: wait() tries again
            return self.js("return arguments[0].closest('.jp-Cell')", editors[-1])

        cell = self.wait("a cell of the current notebook", click_last_editor)
        ActionChains(self.driver).send_keys(code).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
        return cell

    def output(self, cell: Any) -> str:
        return "\n".join(o.text for o in cell.find_elements("css selector", ".jp-OutputArea-output"))

    def wait_output(self, cell: Any, contains: str = "", timeout: float = 60) -> str:
        return self.wait(f"output containing {contains!r}",
                         lambda: (lambda t: t if t and contains in t else None)(self.output(cell)), timeout)

    # ---- menus and dialogs --------------------------------------------------------------------
    def menu(self, label: str, command: str) -> None:
        """Open a menu of the menu bar and click one of its items (by command id)."""
        bar = self.wait(f"menu {label!r}", lambda: next(
            (e for e in self.driver.find_elements("css selector", ".lm-MenuBar-item") if e.text.strip() == label), None))
        bar.click()
        item = self.wait(f"menu item {command!r}",
                         lambda: self._find(f'.lm-Menu-item[data-command="{command}"]:not(.lm-mod-disabled)'))
        item.click()

    def click_accept(self, timeout: float = 10) -> None:
        """The dialog's accepting button (Save, Rename, OK), then wait until it has closed."""
        self.wait("the dialog's accept button", lambda: self._find(".jp-Dialog .jp-Dialog-button.jp-mod-accept"), timeout).click()
        self.wait("the dialog to close", lambda: not self.dialog(), timeout)

    def dialog(self) -> str:
        return str(self.js("const d = document.querySelector('.jp-Dialog'); return d ? d.innerText : '';"))

    def accept(self, button: str, timeout: float = 10) -> None:
        btn = self.wait(f"dialog button {button!r}", lambda: next(
            (e for e in self.driver.find_elements("css selector", ".jp-Dialog .jp-Dialog-button")
             if e.text.strip() == button), None), timeout)
        btn.click()
        self.wait("the dialog to close", lambda: not self.dialog(), timeout)
