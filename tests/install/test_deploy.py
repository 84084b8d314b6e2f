"""Deploying the gateway: deploy/docker-compose.yml (Debian's docker-compose) runs it in a container
built without a registry, and deploy/kernel-gateway-ext.service runs it on the host. Each is brought up
as an operator would, a kernel is run through it, and stopping it leaves nothing behind."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import docker
import pytest

from kernel_gateway_ext.containers import hostguard
from tests.api.test_v2_auth_and_input import multipart, signed
from tests.clients.v2util import Keys
from tests.conftest import IN_CI, Client, new_gateway_id, wait_http
from tests.ports import free_port
from tests.wsclient import KernelWS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
pytestmark = pytest.mark.docker


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        msg = f"{tool} is not installed (scripts/run-tests installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip("!!! SKIPPED: " + msg)
    return found


def ours(gateway_id: str) -> list:
    return docker.from_env().containers.list(all=True, filters={"label": f"org.kge.gateway={gateway_id}"})


class Url:
    def __init__(self, url: str) -> None:
        self.url = url


async def run_a_kernel(url: str, token: str, keys: Keys | None = None) -> None:
    """A Jupyter kernel over the websocket; with keys, a v2 kernel reading a file uploaded to a folder
    (the folder is bind-mounted by host path: the gateway's state folder must be where the engine sees it)."""
    c = Client(url, token)
    r = await c.fetch("POST", "/api/kernels", {"name": "python3"})
    assert r.status == 201, r.body
    ws = await KernelWS.connect(url, r.json["id"], token)
    try:
        out = ws.stdout(await ws.execute("import socket; print(socket.gethostname()[:7])"))
    finally:
        ws.close()
    assert out == "kernel-\n", out
    if keys is not None:
        gw = Url(url)
        assert (await signed(gw, keys, "POST", "/v2/folders/", b'{"name": "data"}'))[0] == 201
        ctype, body = multipart([("hello.txt", b"hello from the host")])
        assert (await signed(gw, keys, "POST", "/v2/folders/data/upload", body, content_type=ctype))[0] == 201
        create = {"lang": "python3", "clientSessionToken": "deploy-1", "config": {"mounts": ["data"]}}
        assert (await signed(gw, keys, "POST", "/v2/kernel/create", json.dumps(create).encode()))[0] == 201
        status, res = await signed(gw, keys, "POST", "/v2/kernel/deploy-1", json.dumps(
            {"mode": "query", "code": "print(open('data/hello.txt').read())", "runId": None}).encode())
        assert res["result"]["console"] == [["stdout", "hello from the host\n"]], res


def host_warnings(url: str, token: str) -> list[str]:
    """The gateway's warnings (GET /api, as its token) that say kernels could reach the host or
    fill its disk."""
    request = urllib.request.Request(url + "api", headers={"Authorization": f"token {token}"})
    status = json.loads(urllib.request.urlopen(request, timeout=10).read())
    return [w for w in status["warnings"] if "reach the host" in w or "disk" in w]


def test_compose_runs_the_gateway_in_a_container(need_docker, tmp_path) -> None:
    compose = need("docker-compose")
    subprocess.run([str(DEPLOY / "prepare-wheels")], check=True, capture_output=True, timeout=600)
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    gateway_id = new_gateway_id("compose-")
    token = "compose-" + uuid.uuid4().hex
    env = {**os.environ, "KGE_AUTH_TOKEN": token, "KGE_PORT": str(port), "KGE_STATE_DIR": str(state),
           "KGE_GATEWAY_ID": gateway_id, "COMPOSE_PROJECT_NAME": gateway_id.replace("-", "")}
    base = [compose, "-f", str(DEPLOY / "docker-compose.yml")]
    up = subprocess.run([*base, "up", "-d", "--build"], env=env, capture_output=True, text=True, timeout=900)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(url + "api", timeout=1).read()
                break
            except OSError:
                logs = subprocess.run([*base, "logs", "--no-color", "--tail=40"], env=env, capture_output=True, text=True).stdout
                assert time.monotonic() < deadline, f"the composed gateway did not come up:\n{logs}"
                time.sleep(0.5)
        # the keys subcommand, in the container, on the same store and config as its gateway
        made = subprocess.run([*base, "exec", "-T", "gateway", "kernel-gateway-ext", "keys", "create", "--user=alice", "--json"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        pair = json.loads(made.stdout)
        asyncio.run(run_a_kernel(url, token, Keys(pair["access_key"], pair["secret_key"], "alice")))
        assert not host_warnings(url, token)  # the gateway in its container guards the host (NET_ADMIN)
        assert (state / "folders").is_dir()  # the folders root is the host's state folder
        assert ours(gateway_id), "the gateway's kernels run on the host's engine"
    finally:
        down = subprocess.run([*base, "down"], env=env, capture_output=True, text=True, timeout=300)
        # What each build leaves untagged (the builder stage, the image it replaced): ~570 MB a run.
        for label in ("gateway-builder", "gateway"):
            subprocess.run(["docker", "image", "prune", "-f", "--filter", f"label=org.kge.image={label}"],
                           capture_output=True, timeout=120)
    assert down.returncode == 0, down.stderr[-2000:]
    assert not ours(gateway_id), "docker-compose down left kernel containers"
    untagged = subprocess.run(["docker", "images", "-q", "--filter", "dangling=true", "--filter",
                               "label=org.kge.image=gateway"], capture_output=True, text=True).stdout.split()
    assert not untagged, f"untagged gateway images left: {untagged}"


def unit_commands(unit: str, prefix: str) -> tuple[dict[str, str], list[list[str]], list[str], dict[str, str]]:
    """What systemd would run for the unit: (Environment=, ExecStartPre= lines, ExecStart=, [Service])."""
    env: dict[str, str] = {}
    pre: list[list[str]] = []
    start: list[str] = []
    service: dict[str, str] = {}
    for line in unit.replace("/opt/kernel-gateway-ext", prefix).splitlines():
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        service[key] = value
        if key == "Environment":
            for word in shlex.split(value):
                k, _, v = word.partition("=")
                env[k] = v
        elif key in ("ExecStartPre", "ExecStart"):
            argv = shlex.split(value.lstrip("+-@!:"))
            (pre.append(argv) if key == "ExecStartPre" else start.extend(argv))
    return env, pre, start, service


def as_the_unit(service: dict[str, str], user: str) -> list[str]:
    """The prefix that runs a command as systemd runs the unit's service: its User= (here `user`,
    made for the test), Group=, SupplementaryGroups=, ambient capabilities, capability bounding
    set and no-new-privileges (setpriv, util-linux)."""
    setpriv = need("setpriv")
    groups = ",".join(service.get("SupplementaryGroups", "").split())
    caps = ",".join("+" + c.lower().removeprefix("cap_") for c in service.get("AmbientCapabilities", "").split())
    bounding = ",".join(["-all", *("+" + c.lower().removeprefix("cap_")
                                   for c in service.get("CapabilityBoundingSet", "").split())])
    return [setpriv, f"--reuid={user}", f"--regid={user}", f"--groups={groups}" if groups else "--clear-groups",
            *([f"--inh-caps={caps}", f"--ambient-caps={caps}"] if caps else []), f"--bounding-set={bounding}",
            *(["--no-new-privs"] if service.get("NoNewPrivileges") == "yes" else [])]


def test_the_systemd_unit_verifies_and_runs_the_gateway(need_docker, tmp_path) -> None:
    analyze = need("systemd-analyze")
    unit = (DEPLOY / "kernel-gateway-ext.service").read_text()
    venv = str(Path(sys.executable).parent.parent)
    rendered = tmp_path / "kernel-gateway-ext.service"
    rendered.write_text(unit.replace("/opt/kernel-gateway-ext", venv))
    check = subprocess.run([analyze, "verify", str(rendered)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and not check.stderr.strip(), check.stderr

    env, pre, start, service = unit_commands(unit, venv)
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "on-failure"
    assert service["User"] == "kge" and service["SupplementaryGroups"] == "docker"
    assert "KGE_AUTH_TOKEN" not in unit.split("[Unit]")[1]  # the secret comes from the EnvironmentFile
    assert json.loads(env["KGE_POOL_SIZES"]) == {"python3": 2}  # systemd's quoting keeps it JSON
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs the unit as its own user: that needs root (useradd, setpriv)")
        pytest.skip("!!! SKIPPED, NEEDS ROOT: the unit runs as its own user (useradd, setpriv)")
    # As systemd runs it: as its own unprivileged user (made here, as the unit's comment says), with
    # the unit's groups and capabilities only, its environment, the env file's secret, its state folder
    # (StateDirectory=, 0700, the user's) and its runtime folder (RuntimeDirectory=, the user's).
    user = "kge-t" + uuid.uuid4().hex[:6]
    port, gateway_id, token = free_port(), new_gateway_id("systemd-"), "unit-" + uuid.uuid4().hex
    state = Path(f"/var/lib/{user}")
    runtime = Path(f"/run/{user}")
    network = f"{user}-net"
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", "--groups", "docker", user],
                   check=True, capture_output=True)
    try:
        for folder in (state, runtime):
            folder.mkdir(mode=0o700)
            shutil.chown(folder, user, user)
        run_env = {"PATH": os.environ["PATH"], "HOME": str(state), **env, "KGE_STATE_DIR": str(state),
                   "KGE_CONFIG": str(tmp_path / "absent_config.py"), "KGE_AUTH_TOKEN": token, "KGE_PORT": str(port),
                   "KGE_GATEWAY_ID": gateway_id, "KGE_POOL_SIZES": "{}",
                   # without egress kernels get no network: their sockets in the runtime folder
                   "KGE_NETWORK_EGRESS": "0", "KGE_NETWORK": network, "KGE_IPC_DIR": str(runtime)}
        for argv in pre:  # "+": with full privileges
            done = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        prefix = as_the_unit(service, user)
        made = subprocess.run([*prefix, *start, "keys", "create", "--user=alice", "--json"], env=run_env,
                              capture_output=True, text=True, timeout=120, cwd=str(state))
        assert made.returncode == 0, made.stderr[-2000:]
        pair = json.loads(made.stdout)
        log = tmp_path / "unit.log"
        proc = subprocess.Popen([*prefix, *start], env=run_env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                cwd=str(state))
        try:
            wait_http(f"http://127.0.0.1:{port}/api", proc, log)
            url = f"http://127.0.0.1:{port}/"
            asyncio.run(run_a_kernel(url, token, Keys(pair["access_key"], pair["secret_key"], "alice")))
            assert not host_warnings(url, token), log.read_text()[-2000:]
            kernels = [c for c in ours(gateway_id) if c.labels.get("org.kge.kind") == "kernel"]
            assert kernels and all(c.attrs["HostConfig"]["NetworkMode"] == "none" for c in kernels), \
                "not kernels without a network (IPC)"
            assert (runtime / gateway_id).is_dir()
        finally:
            proc.send_signal(signal.SIGTERM)  # KillSignal=
            code = proc.wait(timeout=float(service["TimeoutStopSec"]))
        assert code == 0, log.read_text()[-2000:]
        assert not ours(gateway_id), "stopping the service left kernel containers"
        assert not (runtime / gateway_id).exists()
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker.from_env().networks.get(network).remove()
        hostguard.prune()  # the removed network's rule (a gateway's next start would prune it)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)
        subprocess.run(["userdel", user], capture_output=True)
        subprocess.run(["groupdel", user], capture_output=True)
