"""The gateway's own web page in headless Chromium, as its users meet it: sign in with a key pair,
see what was started through each dialect (Jupyter REST, backend.ai-client, canfar) appear live,
start a Skaha session from the page and follow its log, upload into a folder and read the file
from a kernel, restart and delete from the page; a second user sees none of it, an operator sees
all of it and revokes a key pair, which signs its page out.

Every step leaves a screenshot in test-output/page/ (two of them are in the README).
"""
from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.browser.lab import Browser
from tests.browser.test_jupyterlab import require_browser
from tests.clients.v2util import Keys, create_keys, run_canfar, run_py
from tests.conftest import FIGURES, ProcessGateway, require_docker, start_process_gateway, stop_process_gateway

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "page"
APPEAR_WITHIN = 2.0  # seconds from a client's answer to the card on the page
TERMINAL = "images.canfar.net/skaha/terminal:1.1.1"


class Page(Browser):
    """The gateway's page in one Chromium window."""

    def __init__(self, url: str, who: str) -> None:
        super().__init__(SHOTS)
        self.url, self.who = url, who

    def step(self, name: str) -> None:
        self.shot(f"{self.who}-{name}")

    def open(self) -> None:
        self.driver.get(self.url)
        self.wait("the page", lambda: self.js("return !!document.getElementById('signin') && "
                                              "(!document.getElementById('signin').hidden || !document.getElementById('app').hidden)"))

    def sign_in(self, keys: Keys) -> None:
        self.open()
        from selenium.webdriver.common.keys import Keys as Key

        # By keyboard alone: the form takes the focus, Tab moves on, Enter signs in.
        self.wait("the sign-in form with the focus", lambda: self.js("return document.activeElement.id") == "access-key")
        self.driver.switch_to.active_element.send_keys(keys.access_key, Key.TAB, keys.secret_key, Key.ENTER)
        self.wait("the signed-in page", lambda: self.js("return !document.getElementById('app').hidden"), 20)
        self.wait("the live list", lambda: self.js("return document.getElementById('live-state').textContent === 'live'"), 20)

    def type(self, selector: str, text: str) -> None:
        el = self.wait(selector, lambda: self._find(selector))
        el.clear()
        el.send_keys(text)

    def click(self, selector: str) -> None:
        def clicked() -> bool:  # found and clicked (a stale element is looked up again)
            self._find(selector).click()
            return True
        self.wait(selector, clicked)

    def card(self, ident: str) -> Any:
        return self._find(f'article.item[data-id="{ident}"]')

    def card_state(self, ident: str) -> str:
        return str(self.js(f"const c = document.querySelector('article.item[data-id=\"{ident}\"] .state'); return c ? c.textContent : ''"))

    def card_ids(self) -> list[str]:
        return list(self.js("return [...document.querySelectorAll('article.item')].map(e => e.dataset.id)") or [])

    def act(self, ident: str, label: str) -> None:
        self.click(f'article.item[data-id="{ident}"] button[aria-label^="{label} "]')

    def fetch(self, method: str, path: str, csrf: bool = True) -> dict[str, Any]:
        """A request from the page's own script context (its cookie; its CSRF header if `csrf`)."""
        return self.driver.execute_async_script("""
            const [method, path, csrf, done] = arguments;
            (async () => {
              const headers = {};
              if (csrf) headers['X-KGE-CSRF'] = (await (await fetch('ui/api/me')).json()).csrf;
              const r = await fetch(path, {method, headers});
              done({status: r.status, text: await r.text()});
            })();""", method, path, csrf)

    def wait_gone(self, ident: str, timeout: float = 30) -> None:
        self.wait(f"card {ident} gone", lambda: self.card(ident) is None and ident not in self.card_ids(), timeout)


def api(gw: ProcessGateway, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(gw.url + path, data=data, method=method,
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessGateway]:
    require_docker()
    require_browser()
    gateway = start_process_gateway(str(tmp_path_factory.mktemp("page-gw")), "--ip=127.0.0.1",
                                    env={"KGE_PAGE_SAMPLE_SECONDS": "1", "KGE_POOL_SIZES": ""})
    yield gateway
    assert stop_process_gateway(gateway) == 0, open(gateway.log_path).read()[-3000:]
    left = docker.from_env().containers.list(all=True, filters={"label": f"org.kge.gateway={gateway.gateway_id}"})
    assert not left, f"the gateway left containers: {[c.short_id for c in left]}"


@pytest.fixture(scope="module")
def alice() -> Keys:
    return create_keys("page-alice")


@pytest.fixture(scope="module")
def bob() -> Keys:
    return create_keys("page-bob")


@pytest.fixture(scope="module")
def operator() -> Keys:
    return create_keys("page-operator", admin=True)


@pytest.fixture(scope="module")
def alice_page(gw: ProcessGateway, alice: Keys) -> Iterator[Page]:
    page = Page(gw.url, "alice")
    try:
        yield page
    finally:
        page.close()


@pytest.fixture(scope="module")
def seen(gw: ProcessGateway) -> dict[str, str]:
    """What the tests made, by what it is: the kernel and session ids later steps act on."""
    return {}


def test_sign_in(alice_page: Page, alice: Keys) -> None:
    page = alice_page
    page.open()
    assert page.js("return !document.getElementById('signin').hidden"), "an anonymous visit shows the sign-in form"
    page.type("#access-key", alice.access_key)
    page.type("#secret-key", "not-the-secret")
    page.click("#signin-form button[type=submit]")
    page.wait("the refusal", lambda: "wrong access key" in page.js("return document.getElementById('signin-error').textContent"))
    page.step("01-sign-in-refused")
    page.sign_in(alice)
    assert "page-alice" in page.js("return document.getElementById('who-name').textContent")
    cookie = page.driver.get_cookie("kge_page")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.js("return document.cookie").find("kge_page") < 0, "the sign-in cookie is not readable by scripts"
    page.step("02-signed-in")


def test_a_start_the_api_refuses_shows_the_dialects_own_message(alice_page: Page) -> None:
    page = alice_page
    page.click("#start summary")
    page.type("#k-ram", "lots")
    page.click("#start-kernel button[type=submit]")
    message = page.wait("the refusal", lambda: page.js("return document.querySelector('#start-kernel .error').textContent"))
    assert "lots" in message or "memory" in message.lower(), message
    page.type("#k-ram", "")
    page.click("#start summary")  # folded again


def test_kernels_of_each_dialect_appear_live(gw: ProcessGateway, alice_page: Page, alice: Keys, seen: dict[str, str],
                                             tmp_path: Path) -> None:
    page = alice_page
    appear: dict[str, float] = {}

    # Jupyter REST (what JupyterLab's gateway client sends).
    status, model = api(gw, "POST", "api/kernels", alice.token, {"name": "python3"})
    assert status == 201, model
    answered = time.monotonic()
    page.wait("the Jupyter kernel's card", lambda: page.card(model["id"]), APPEAR_WITHIN)
    appear["jupyter"] = time.monotonic() - answered
    seen["jupyter"] = model["id"]

    # backend.ai-client 1.4.2 (the real SDK), a v2 kernel.
    out = run_py("bai-1.4.2", """
        import json
        from ai.backend.client.session import Session
        with Session() as s:
            k = s.Kernel.get_or_create('python3', client_token='page-v2-kernel')
            print(json.dumps({"id": k.kernel_id}))""", gw.url, alice)
    answered = time.monotonic()
    v2_id = page.wait("the v2 kernel's card", lambda: page.js(
        "const c = [...document.querySelectorAll('article.item')].find(e => e.textContent.includes('page-v2-kernel'));"
        "return c && c.dataset.id"), APPEAR_WITHIN)
    appear["v2"] = time.monotonic() - answered
    seen["v2"] = v2_id
    assert out["id"] == "page-v2-kernel"

    # canfar 1.5.2 (the real CLI), a Skaha headless session.
    created = run_canfar(["create", "--name", "pagejob", "headless", TERMINAL, "--", "sleep", "600"],
                         gw.url, alice, str(tmp_path))
    answered = time.monotonic()
    session_id = created.stdout.split("ID: ")[1].split(")")[0]
    page.wait("the Skaha session's card", lambda: page.card(session_id), APPEAR_WITHIN)
    appear["skaha"] = time.monotonic() - answered
    seen["canfar"] = session_id

    # Figures arrive with the live list: memory in use, on a chart of the last minutes.
    page.wait("memory figures", lambda: "Memory —" not in page.card(seen["jupyter"]).text, 20)
    page.wait("a chart", lambda: page.js(
        f"return document.querySelector('article.item[data-id=\"{seen['jupyter']}\"] .fig.mem polyline') !== null"), 20)
    # Pushes keep the card's buttons (a click or the focus is never lost to one).
    button = page.card(seen["jupyter"]).find_element("css selector", 'button[aria-label^="Restart "]')
    chart = f"article.item[data-id=\"{seen['jupyter']}\"] .fig.mem polyline"
    points = page.js(f"return document.querySelector('{chart}').getAttribute('points')")
    page.wait("a push with a new sample", lambda: page.js(
        f"return document.querySelector('{chart}').getAttribute('points')") != points, 10)
    assert button.is_displayed(), "the same button element is still on the page"
    page.step("03-three-dialects")
    FIGURES.append("page     a card appears after the client's answer (Jupyter / v2 / Skaha): "
                   + " / ".join(f"{appear[k] * 1000:.0f} ms" for k in ("jupyter", "v2", "skaha")))


def test_start_a_session_from_the_page_and_follow_its_log(alice_page: Page, seen: dict[str, str]) -> None:
    page = alice_page
    page.click("#start summary")
    page.wait("the images", lambda: page.js("return document.getElementById('s-image').options.length > 0"))
    chosen = page.js("const s = document.getElementById('s-image');"
                     "const o = [...s.options].find(o => o.value.includes('skaha/terminal')); s.value = o.value; return o.value")
    assert chosen
    page.type("#s-name", "followme")
    page.type("#s-cmd", "sh")
    # Skaha splits args by words: a script without spaces (${IFS}) runs as one word.
    page.type("#s-args", "-c echo${IFS}first-line;sleep${IFS}4;echo${IFS}second-line;sleep${IFS}600")
    page.click("#start-session button[type=submit]")
    ident = page.wait("the new session's card", lambda: page.js(
        "const c = [...document.querySelectorAll('article.item')].find(e => e.textContent.includes('followme'));"
        "return c && c.dataset.id"), 30)
    seen["page-session"] = ident
    page.wait("the session running", lambda: page.card_state(ident) == "Running", 60)
    page.act(ident, "Logs")
    page.wait("the first line", lambda: "first-line" in page.js("return document.getElementById('log').textContent"), 30)
    assert "second-line" not in page.js("return document.getElementById('log').textContent")
    page.step("04-following-a-log")
    page.wait("the second line, followed", lambda: "second-line" in page.js("return document.getElementById('log').textContent"), 30)
    page.step("05-log-followed")
    page.click("#detail-close")
    page.act(ident, "Events")
    page.wait("the events", lambda: "Started" in page.js("return document.getElementById('detail-body').textContent"), 10)
    page.click("#detail-close")


def test_upload_to_a_folder_and_read_it_from_a_kernel(gw: ProcessGateway, alice_page: Page, alice: Keys, tmp_path: Path) -> None:
    page = alice_page
    page.click("#tab-folders")
    page.type("#folder-name", "pagedata")
    page.click("#new-folder button")
    page.click('button[data-folder="pagedata"]')
    src = tmp_path / "hello.txt"
    src.write_text("hello from the page\n")
    page.wait("the file input", lambda: page._find("#upload-files")).send_keys(str(src))
    page.click("#upload button")
    page.wait("the uploaded file", lambda: page._find('tr[data-file="hello.txt"]'), 20)
    page.step("06-folder-upload")
    href = page.js("return document.querySelector('tr[data-file=\"hello.txt\"] a').getAttribute('href')")
    got = page.fetch("GET", href, csrf=False)
    assert got["status"] == 200 and got["text"] == "hello from the page\n"
    # The file, from a kernel that mounts the folder (backend.ai-client, as its users do).
    out = run_py("bai-1.4.2", """
        import json
        from ai.backend.client.session import Session
        with Session() as s:
            k = s.Kernel.get_or_create('python3', client_token='page-reader', mounts=['pagedata'])
            r = k.execute(code="print(open('/home/work/pagedata/hello.txt').read(), end='')", mode='query')
            k.destroy()
            print(json.dumps({"console": r["console"]}))""", gw.url, alice)
    assert out["console"] == [["stdout", "hello from the page\n"]]
    page.click("#tab-mine")


def test_restart_and_delete_from_the_page(gw: ProcessGateway, alice_page: Page, alice: Keys, seen: dict[str, str]) -> None:
    page = alice_page
    ident = seen["jupyter"]
    page.act(ident, "Restart")
    page.wait("the kernel restarted and idle again", lambda: page.card(ident).get_attribute("data-restarts") == "1"
              and page.card_state(ident) == "idle", 60)
    assert page.js("return document.getElementById('action-error').textContent") == ""
    status, model = api(gw, "GET", f"api/kernels/{ident}", alice.token)
    assert status == 200 and model["execution_state"] == "idle"
    page.act(ident, "Connect")
    text = page.js("return document.getElementById('detail-body').textContent")
    assert f"--gateway-url={gw.url.rstrip('/')}" in text and alice.access_key in text and alice.secret_key not in text
    page.step("07-connect")
    page.click("#detail-close")
    page.act(ident, "Delete")
    page.wait_gone(ident)
    assert api(gw, "GET", f"api/kernels/{ident}", alice.token)[0] == 404
    page.step("08-deleted")
    # A change without the CSRF header is refused, even from the page's own origin.
    refused = page.fetch("DELETE", f"api/kernels/{seen['v2']}", csrf=False)
    assert refused["status"] == 403 and "X-KGE-CSRF" in refused["text"]


def test_a_narrow_screen(alice_page: Page) -> None:
    page = alice_page
    page.driver.set_window_size(390, 844)
    try:
        time.sleep(0.3)
        assert page.js("return document.documentElement.scrollWidth <= window.innerWidth + 1"), "nothing runs off the side"
        page.step("13-narrow-screen")
    finally:
        page.driver.set_window_size(1400, 900)


def test_a_second_user_sees_none_of_it(gw: ProcessGateway, bob: Keys, seen: dict[str, str]) -> None:
    page = Page(gw.url, "bob")
    try:
        page.sign_in(bob)
        time.sleep(1.5)  # a push or two
        assert page.card_ids() == []
        assert page.js("return !document.getElementById('items-empty').hidden")
        for path in (f"api/kernels/{seen['v2']}", f"skaha/v0/session/{seen['canfar']}"):
            assert page.fetch("GET", path)["status"] == 404
        assert page.fetch("DELETE", f"api/kernels/{seen['v2']}")["status"] == 404
        assert page.fetch("GET", "ui/api/admin/keypairs")["status"] == 403
        page.step("09-another-user")
    finally:
        page.close()


def test_an_operator_sees_all_and_revocation_signs_out(gw: ProcessGateway, operator: Keys, alice_page: Page,
                                                       alice: Keys, seen: dict[str, str]) -> None:
    page = Page(gw.url, "operator")
    try:
        page.sign_in(operator)
        for ident in (seen["v2"], seen["canfar"], seen["page-session"]):
            page.wait(f"alice's {ident}", lambda ident=ident: page.card(ident), 10)
        page.wait("the owner on the card", lambda: "owner page-alice" in page.card(seen["v2"]).text)
        page.step("10-operator-sees-all")
        page.click("#tab-admin")
        page.wait("the key pairs", lambda: page._find(f'tr[data-access-key="{alice.access_key}"]'), 10)
        assert "Memory promised" in page.js("return document.getElementById('capacity').textContent")
        page.type("#kp-user", "page-carol")
        page.click("#new-keypair button")
        page.wait("carol's secret, shown once", lambda: "secret key:" in page.js("return document.getElementById('new-secret').textContent"))
        page.step("11-admin")
        page.click(f'button[aria-label="Revoke {alice.access_key}"]')
        revoked = time.monotonic()
        alice_page.wait("alice's page signed out", lambda: alice_page.js(
            "return !document.getElementById('signin').hidden"), 10)
        FIGURES.append(f"page     revocation → the user's page signed out: {(time.monotonic() - revoked) * 1000:.0f} ms")
        assert "revoked" in alice_page.js("return document.getElementById('signin-error').textContent")
        alice_page.step("12-revoked-signed-out")
        assert api(gw, "GET", "api/kernels", alice.token)[0] == 401
        # The operator cleans up alice's things from the page.
        page.click("#tab-mine")
        for ident in (seen["v2"], seen["canfar"], seen["page-session"]):
            page.act(ident, "Delete")
            page.wait_gone(ident)
    finally:
        page.close()
