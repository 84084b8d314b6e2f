"""Running the gateway the Jupyter way: a generated config file found where Jupyter apps look, the
same configuration for every subcommand, real help, logs in Jupyter's format or JSON naming the caller,
/metrics with process figures and request latency, one env allow-list."""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid

from tests.conftest import Client, TOKEN, start_process_gateway, stop_process_gateway

CLI = [sys.executable, "-m", "kernel_gateway_ext"]


def cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def test_every_subcommand_has_help_and_the_options_say_their_env_and_real_defaults() -> None:
    for args, words in ((["keys", "--help"], "key pair"), (["keys", "--help-all"], "KGE_STATE_DIR"),
                        (["build-images", "--help"], "debootstrap"), (["build-images", "--help-all"], "KGE_KERNELSPEC_DIRS"),
                        (["--help"], "--generate-config")):
        out = cli(*args)
        assert "Traceback" not in out.stderr and words in out.stdout, (args, out.stdout[-1500:], out.stderr[-1500:])
    every = " ".join(cli("--help-all").stdout.split())  # help is wrapped
    assert "[env: KGE_MASTER_KEY]" in every and "[env: KGE_ENV_ALLOWLIST]" in every
    assert "KGE_KERNEL_ENV_ALLOWLIST" not in every  # one allow-list, not two
    assert "[env: KGE_SESSION_LIFETIMES]" in every and "[env: KGE_SESSION_DEFAULT_LIFETIME]" in every
    level = every[every.index("--log-level="):][:400]
    assert "Default: 'INFO'" in level, level  # the level in effect (traitlets' own says 30, WARN)
    assert "--Application.log_level" not in every


def test_generated_config_is_found_where_jupyter_looks_and_every_subcommand_reads_it(need_docker, tmp_path) -> None:
    confdir = tmp_path / "jupyter-config"
    env = {"JUPYTER_CONFIG_DIR": str(confdir)}
    out = cli("--generate-config", env=env).stdout
    path = confdir / "kernel_gateway_ext_config.py"
    assert str(path) in out and path.exists()
    text = path.read_text()
    # commented, every option with its help and env var
    assert "# c.Gateway.port = 8888" in text and "[env: KGE_PORT]" in text and "# c.Store.state_dir" in text
    compile(text, str(path), "exec")

    state = tmp_path / "state"
    path.write_text(text + f"\nc.Store.state_dir = {str(state)!r}\n"
                           "c.GatewayKernelSpecManager.default_kernel_name = 'bash'\n")
    # keys: the file's store (before: keys ignored config files)
    created = json.loads(cli("keys", "create", "--user=cfg-user", "--json", env=env).stdout)
    listed = cli("keys", "list", env=env).stdout
    assert created["access_key"] in listed and (state / "state.db").exists()
    # and --config=FILE names another file
    other = tmp_path / "other.py"
    other.write_text(f"c.Store.state_dir = {str(tmp_path / 'state2')!r}\n")
    assert created["access_key"] not in cli("keys", f"--config={other}", "list", env=env).stdout

    # The gateway reads the same file; the file beats KGE_* env vars, the command line beats the file.
    gw = start_process_gateway(str(tmp_path), "--json-logs",
                               env={**env, "KGE_DEFAULT_KERNEL": "python3", "KGE_POOL_SIZES": "{}"})
    try:
        async def check() -> None:
            c = Client(gw.url, f"{created['access_key']}:{created['secret_key']}")
            assert (await c.fetch("GET", "/api/kernelspecs")).json["default"] == "bash"
            assert (await Client(gw.url, "wrong-token").fetch("GET", "/api/kernels")).status in (401, 403)

        asyncio.run(check())
    finally:
        assert stop_process_gateway(gw) == 0
    lines = [json.loads(line) for line in open(gw.log_path) if line.startswith("{")]
    access = [r for r in lines if r.get("route") == "/api/kernelspecs"]
    assert access and access[0]["user"] == "cfg-user" and access[0]["remote_ip"] == "127.0.0.1"
    assert access[0]["access_key"] == created["access_key"] and access[0]["status"] == 200
    assert {"time", "level", "logger", "message"} <= set(access[0])
    log = open(gw.log_path).read()
    assert created["secret_key"] not in log and TOKEN not in log and "wrong-token" not in log

    cli_wins = start_process_gateway(str(tmp_path), "--GatewayKernelSpecManager.default_kernel_name=python3",
                                     env={**env, "KGE_POOL_SIZES": "{}"})
    try:
        async def check2() -> None:
            assert (await Client(cli_wins.url).fetch("GET", "/api/kernelspecs")).json["default"] == "python3"

        asyncio.run(check2())
    finally:
        assert stop_process_gateway(cli_wins) == 0
    # text logs in jupyter_server's format: [I 2026-12-02 05:09:13.120 Gateway] 200 GET /api/kernelspecs (admin@127.0.0.1) 1.2ms
    text_log = open(cli_wins.log_path).read()
    assert re.search(r"^\[I \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \S+\] 200 GET /api/kernelspecs \(admin@127\.0\.0\.1\) ",
                     text_log, re.M), text_log[-2000:]


async def test_metrics_have_process_figures_and_request_latency_by_route(gateway) -> None:
    c = gateway.client
    missing = str(uuid.uuid4())
    assert (await c.fetch("GET", f"/api/kernels/{missing}")).status == 404
    assert (await c.fetch("GET", "/api/kernelspecs")).status == 200
    text = (await c.fetch("GET", "/metrics")).body.decode()
    for series in ("process_resident_memory_bytes", "process_open_fds", "python_info", "python_gc_objects_collected_total"):
        assert re.search(rf"^{series}\b", text, re.M), series
    count = r'^kge_http_request_duration_seconds_count\{method="GET",route="/api/kernels/\{kernel_id\}",status="404"\} 1\.0'
    assert re.search(count, text, re.M), [line for line in text.splitlines() if "duration" in line][:20]
    assert 'route="/api/kernelspecs",status="200"' in text
    assert missing not in text  # ids never become labels
    assert (await Client(gateway.url, None).fetch("GET", "/metrics", token=None)).status in (401, 403)


async def test_one_env_allowlist_decides_what_reaches_a_kernel(make_gateway, docker_client) -> None:
    async with make_gateway("--GatewayKernelManager.env_allowlist=ALLOWED_ONE") as gw:
        r = await gw.client.fetch("POST", "/api/kernels", {"name": "python3", "env": {
            "ALLOWED_ONE": "yes", "NOT_LISTED": "no", "KERNEL_USERNAME": "ann"}})
        assert r.status == 201, r.body
        (container,) = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={r.json['id']}"})
        env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
        assert env.get("ALLOWED_ONE") == "yes" and env.get("KERNEL_USERNAME") == "ann" and "NOT_LISTED" not in env
        assert not any(k.startswith("KGE_") for k in env)  # nothing of the gateway's own environment
        await gw.client.fetch("DELETE", f"/api/kernels/{r.json['id']}")


async def test_session_lifetimes_come_from_their_documented_variable(make_gateway, monkeypatch) -> None:
    monkeypatch.setenv("KGE_SESSION_LIFETIMES", '{"headless": 120, "notebook": 600}')
    monkeypatch.setenv("KGE_SESSION_DEFAULT_LIFETIME", "30")
    async with make_gateway() as gw:
        assert gw.app.jobs.lifetimes == {"headless": 120, "notebook": 600}
        assert gw.app.jobs.default_lifetime == 30
