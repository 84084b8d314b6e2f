"""Options are traits with env vars and help; precedence default < env < config file < CLI."""
import subprocess
import sys

import pytest

from kernel_gateway_ext.app import Gateway
from kernel_gateway_ext.auth import Authenticator


def make(argv, monkeypatch, **env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    app = Gateway()
    app.initialize(argv)
    return app


def test_env_then_cli_precedence(monkeypatch, tmp_path):
    app = make([], monkeypatch, KGE_PORT="9123", KGE_IP="127.0.0.2")
    assert (app.port, app.ip) == (9123, "127.0.0.2")
    cfg = tmp_path / "cfg.py"
    cfg.write_text("c.Gateway.port = 9200\nc.Authenticator.auth_token = 'from-file'\n")
    app = make([f"--config={cfg}"], monkeypatch, KGE_PORT="9123")
    assert app.port == 9200  # file beats env
    assert app.authenticator.auth_token == "from-file"
    app = make([f"--config={cfg}", "--port=9300"], monkeypatch)
    assert app.port == 9300  # CLI beats file


def test_bad_env_value_names_the_variable(monkeypatch):
    with pytest.raises(ValueError, match="KGE_PORT"):
        make([], monkeypatch, KGE_PORT="eighty")


async def test_token_generated_when_missing(monkeypatch):
    monkeypatch.delenv("KGE_AUTH_TOKEN", raising=False)
    a = Authenticator()
    assert a.generated_token and len(a.auth_token) >= 32
    assert (await a.identify(a.auth_token)).admin
    assert await a.identify("wrong") is None and await a.identify(None) is None


def test_help_all_lists_env_vars():
    out = subprocess.run([sys.executable, "-m", "kernel_gateway_ext", "--help-all"], capture_output=True, text=True, check=True).stdout
    for var in ("KGE_PORT", "KGE_IP", "KGE_AUTH_TOKEN", "KGE_KERNEL_MEM_LIMIT", "KGE_KERNEL_CPU_LIMIT",
                "KGE_KERNEL_PIDS_LIMIT", "KGE_GATEWAY_ID", "KGE_DOCKER_URL"):
        assert var in out, var
    assert "--port" in out and "--auth-token" in out and "--ip" in out


def test_no_key_pair_may_take_the_gateway_tokens_user(tmp_path) -> None:
    """A key pair named 'admin' would own the operator's kernels (the gateway token's user)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "kernel_gateway_ext", "keys", "create", "--user=admin",
                           f"--state-dir={tmp_path}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "gateway token's user" in proc.stderr + proc.stdout, proc.stderr[-500:]


def test_quotas_are_on_by_default_and_follow_the_host(monkeypatch):
    """A fresh gateway shared by mutually untrusted users bounds kernels in all and per owner,
    promised memory, idle kernels and Skaha sessions per owner, from the host's size."""
    from kernel_gateway_ext.containers.limits import host_memory

    for var in ("KGE_MAX_KERNELS", "KGE_MAX_KERNELS_PER_OWNER", "KGE_MEMORY_BUDGET", "KGE_CULL_IDLE_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    app = make([], monkeypatch)
    mgr = app.kernel_manager
    per_128m = host_memory() // (128 * 2**20)
    assert mgr.max_kernels == min(1024, max(16, per_128m)) > 0
    assert mgr.max_kernels_per_owner == max(8, mgr.max_kernels // 4)
    assert mgr.capacity.budget_bytes() == int(host_memory() * 2.5)
    assert mgr.cull_idle_timeout == 86400 and not mgr.cull_connected
    assert app.jobs.max_interactive_sessions == 3 and app.jobs.max_headless_sessions == 32
    # each is overridable, 0 (or empty) turning it off
    app = make(["--GatewayKernelManager.max_kernels=0", "--GatewayKernelManager.memory_budget="], monkeypatch,
               KGE_MAX_KERNELS_PER_OWNER="0")
    assert (app.kernel_manager.max_kernels, app.kernel_manager.max_kernels_per_owner) == (0, 0)
    assert app.kernel_manager.capacity.budget_bytes() == 0
