"""Fixtures shared by the suite.

Docker tests need a real engine and the kernel image. Under CI (CI=true) their absence FAILS the
run; locally they skip with a loud reason. After the suite, no container of ours may remain.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from kernel_gateway_ext.containers.images import KERNEL_IMAGE
from tests.ports import free_port

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Every gateway of the suite (in-process and subprocess) keeps its database and master key here.
os.environ["KGE_STATE_DIR"] = tempfile.mkdtemp(prefix="kge-test-state-")
TOKEN = "test-token-" + uuid.uuid4().hex[:8]
MANAGED = "org.kge.managed=true"
# Gateway ids this test session created: the leak check judges only these (another suite may run
# on the same engine at the same time).
SESSION_GATEWAY_IDS: set[str] = set()


def new_gateway_id(kind: str = "") -> str:
    gateway_id = f"kge-test-{kind}{uuid.uuid4().hex[:8]}"
    SESSION_GATEWAY_IDS.add(gateway_id)
    return gateway_id


def _docker_problem() -> str | None:
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as e:  # noqa: BLE001
        return f"no Docker engine answers ({type(e).__name__}); run scripts/run-tests to set one up"
    try:
        client.images.get(KERNEL_IMAGE)
    except docker.errors.ImageNotFound:
        return f"kernel image {KERNEL_IMAGE} missing; run `kernel-gateway-ext build-images`"
    return None


DOCKER_PROBLEM = _docker_problem()


def pytest_report_header(config: pytest.Config) -> str:
    if DOCKER_PROBLEM:
        verdict = "FAIL (CI)" if IN_CI else "SKIP"
        return f"!!! real-Docker tests will {verdict}: {DOCKER_PROBLEM} !!!"
    return "real Docker engine and kernel image: available"


def require_docker() -> None:
    """Fail under CI, skip loudly elsewhere, when there is no engine or kernel image."""
    if DOCKER_PROBLEM:
        if IN_CI:
            pytest.fail(f"CI requires Docker: {DOCKER_PROBLEM}")
        pytest.skip(f"!!! SKIPPED, NEEDS DOCKER: {DOCKER_PROBLEM}")


@pytest.fixture
def need_docker() -> None:
    require_docker()


def wait_http(url: str, proc: subprocess.Popen, log_path: str | os.PathLike[str], timeout: float = 60) -> None:
    """Wait until `url` answers, or fail with the end of the process's log."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{url} did not come up: {open(log_path).read()[-3000:]}") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=30)
    yield client
    client.close()


@dataclass
class Response:
    status: int
    body: bytes
    headers: Any

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Client:
    """A small async HTTP client for a gateway."""

    def __init__(self, url: str, token: str | None = TOKEN) -> None:
        self.url = url.rstrip("/")
        self.token = token

    async def fetch(
        self, method: str, path: str, body: Any = None, *, token: str | None | bool = True,
        headers: dict[str, str] | None = None, raw: bytes | None = None, timeout: float = 90,
    ) -> Response:
        hdrs = dict(headers or {})
        tok = self.token if token is True else token
        if tok:
            hdrs.setdefault("Authorization", f"token {tok}")
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is None and method in ("POST", "PUT", "PATCH"):
            data = b""
        req = HTTPRequest(
            self.url + path, method=method, body=data, headers=hdrs,
            request_timeout=timeout, allow_nonstandard_methods=True,
        )
        resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        return Response(resp.code, resp.body or b"", resp.headers)


@dataclass
class InProcessGateway:
    app: Any
    url: str
    client: Client
    gateway_id: str


@pytest.fixture
async def gateway(need_docker: None, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[InProcessGateway]:
    """A gateway in this test's event loop, on a free port, with its own gateway id."""
    async for gw in _in_process_gateway([]):
        yield gw


async def _in_process_gateway(extra_argv: list[str]) -> AsyncIterator[InProcessGateway]:
    from kernel_gateway_ext.app import Gateway

    gateway_id = new_gateway_id()
    app = Gateway()
    app.initialize(["--port=0", f"--auth-token={TOKEN}", f"--gateway-id={gateway_id}", "--log-level=WARN", *extra_argv])
    await app.start_server()
    try:
        yield InProcessGateway(app, app.url, Client(app.url), gateway_id)
    finally:
        await app.stop_server()
        left = docker.from_env().containers.list(all=True, filters={"label": f"org.kge.gateway={gateway_id}"})
        assert not left, f"gateway {gateway_id} left containers behind: {[c.short_id for c in left]}"


@pytest.fixture
def make_gateway(need_docker: None):
    """Factory for an in-process gateway with extra CLI arguments (use as `async with`)."""
    import contextlib

    @contextlib.asynccontextmanager
    async def factory(*argv: str):
        agen = _in_process_gateway(list(argv))
        gw = await agen.__anext__()
        try:
            yield gw
        finally:
            with contextlib.suppress(StopAsyncIteration):
                await agen.__anext__()

    return factory


@dataclass
class ProcessGateway:
    url: str
    token: str
    gateway_id: str
    proc: subprocess.Popen
    log_path: str


@contextlib.contextmanager
def jupyter_server_with_gateway(root: Path, gateway_url: str, token: str,
                                env: dict[str, str] | None = None) -> Iterator[str]:
    """A real jupyter_server started with --gateway-url (what JupyterLab runs on), without its own
    token (loopback); its URL. Stopped at the end."""
    port = free_port()
    log_path = root / "jupyter_server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1", "--no-browser",
         "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
         f"--ServerApp.root_dir={root}", "--allow-root", f"--gateway-url={gateway_url}",
         f"--GatewayClient.auth_token={token}", "--GatewayClient.request_timeout=60"],
        stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/api", proc, log_path)
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def start_process_gateway(tmp_dir: str, *argv: str, env: dict[str, str] | None = None,
                          gateway_id: str | None = None, python: str = sys.executable,
                          cwd: str | None = None) -> ProcessGateway:
    port = free_port()
    gateway_id = gateway_id or new_gateway_id("proc-")
    log_path = os.path.join(tmp_dir, f"gateway-{port}.log")
    proc = subprocess.Popen(
        [python, "-m", "kernel_gateway_ext", f"--port={port}", f"--auth-token={TOKEN}",
         f"--gateway-id={gateway_id}", *argv],
        stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd,
    )
    url = f"http://127.0.0.1:{port}/"
    wait_http(url + "api", proc, log_path)
    return ProcessGateway(url, TOKEN, gateway_id, proc, log_path)


def stop_process_gateway(gw: ProcessGateway, sig: int = signal.SIGTERM) -> int:
    gw.proc.send_signal(sig)
    try:
        return gw.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        gw.proc.kill()
        raise


@pytest.fixture(scope="module")
def process_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessGateway]:
    """A real gateway process (for synchronous real clients). SIGTERM at the end must leave
    no container behind."""
    require_docker()
    gw = start_process_gateway(str(tmp_path_factory.mktemp("gw")))
    yield gw
    code = stop_process_gateway(gw)
    assert code == 0, open(gw.log_path).read()[-3000:]
    left = docker.from_env().containers.list(all=True, filters={"label": f"org.kge.gateway={gw.gateway_id}"})
    assert not left, f"SIGTERM left containers: {[c.short_id for c in left]}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite must leave no container of ours on the engine."""
    if DOCKER_PROBLEM:
        return
    try:
        left = docker.from_env(timeout=10).containers.list(all=True, filters={"label": MANAGED})
    except Exception:  # noqa: BLE001
        return
    test_left = [c for c in left if c.labels.get("org.kge.gateway", "") in SESSION_GATEWAY_IDS]
    if test_left:
        names = ", ".join(f"{c.short_id}({c.labels.get('org.kge.gateway')})" for c in test_left)
        print(f"\n!!! LEAK: the suite left containers of ours: {names}", file=sys.stderr)
        for c in test_left:
            c.remove(force=True)
        session.exitstatus = 1


# Figures a test measured as a person would meet them (e.g. the browser test's step times):
# printed at the end of the run, passed or failed.
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("figures measured by the tests")
        for line in FIGURES:
            terminalreporter.write_line(line)
