"""v2 runs that outlast their welcome: execTimeout holds while nobody polls, and a batch command
is killed at its timeout inside the container with its output bounded."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from tests.api.test_v2_auth_and_input import signed
from tests.clients.v2util import Keys, create_keys


async def v2_kernel(gateway, keys: Keys, token: str, exec_ms: int) -> str:
    body = json.dumps({"lang": "python3", "clientSessionToken": token, "limits": {"execTimeout": exec_ms}}).encode()
    status, created = await signed(gateway, keys, "POST", "/v2/kernel/create", body)
    assert status == 201, created
    assert created["kernelId"] == token  # the session id; the Jupyter kernel id is looked up by either
    return gateway.app.kernel_manager.get_by_id_or_token(token).kernel_id


async def execute(gateway, keys: Keys, kid: str, **body) -> dict:
    status, out = await signed(gateway, keys, "POST", f"/v2/kernel/{kid}", json.dumps(body).encode())
    assert status == 200, out
    return out["result"]


async def test_exec_timeout_interrupts_while_nobody_polls(gateway) -> None:
    keys = create_keys("tmo-" + uuid.uuid4().hex[:6])
    kid = await v2_kernel(gateway, keys, "tmo-1", 1500)
    gateway.app.kernel_manager.run_flush_interval = 0.5
    first = await execute(gateway, keys, kid, mode="query", runId="r1",
                          code="import time\nfor _ in range(600):\n    time.sleep(0.1)")
    assert first["status"] == "continued"
    km = gateway.app.kernel_manager.get(kid)
    # the caller goes away: the run must still be interrupted at 1.5 s, not left busy for a minute
    for _ in range(50):
        await asyncio.sleep(0.2)
        if km.execution_state == "idle":
            break
    assert km.execution_state == "idle", "execTimeout passed with nobody polling and the kernel is still busy"
    last = await execute(gateway, keys, kid, mode="continue", runId="r1", code="")
    assert last["status"] == "finished" and last["exitCode"] == 1
    assert any(item[0] == "log" and "execTimeout" in item[1] for item in last["console"])
    again = await execute(gateway, keys, kid, mode="query", runId="r2", code="print(6 * 7)")
    assert again["status"] == "finished" and again["console"] == [["stdout", "42\n"]]


async def test_batch_commands_are_killed_at_their_timeout_and_their_output_bounded(gateway, docker_client) -> None:
    keys = create_keys("bat-" + uuid.uuid4().hex[:6])
    kid = await v2_kernel(gateway, keys, "bat-1", 2000)
    (container,) = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={kid}"})
    began = time.monotonic()
    out = await execute(gateway, keys, kid, mode="batch", code="",
                        options={"exec": "sleep 30 & sleep 31; echo never"})
    took = time.monotonic() - began
    assert out["exitCode"] == 124 and "timed out" in out["console"][-1][1], out
    assert took < 8
    # before: the command ran on (and a docker thread waited for it) long after its caller was answered
    procs = container.exec_run(["sh", "-c", "grep -l '^sleep' /proc/[0-9]*/cmdline 2>/dev/null | wc -l"], user="work")
    assert procs.output.decode().strip() == "0"  # and what it started in the background
    # a flood of output: at most 8 MiB come back, with a note of the rest
    out = await execute(gateway, keys, kid, mode="batch", code="", options={"exec": "head -c 50000000 /dev/zero"})
    stdout = "".join(text for kind, text in out["console"] if kind == "stdout")
    notes = "".join(text for kind, text in out["console"] if kind == "stderr")
    assert out["exitCode"] == 0 and len(stdout) == 8 * 2**20, len(stdout)
    assert "41611392 bytes of output dropped" in notes, notes


async def test_an_idle_v2_kernel_lets_its_sockets_go_and_its_next_run_loses_nothing(make_gateway) -> None:
    """A REST caller's runner holds shell and stdin connections and the output subscription while in
    use; unused for output_release_after (no run going), it lets them all go. A run that is still
    going keeps them. The next call connects again and gets its whole output."""
    async with make_gateway("--GatewayKernelManager.output_release_after=1") as gw:
        keys = create_keys("rel-" + uuid.uuid4().hex[:6])
        kid = await v2_kernel(gw, keys, "rel-1", 60000)
        km = gw.app.kernel_manager.get(kid)
        gw.app.kernel_manager.run_flush_interval = 0.3
        first = await execute(gw, keys, kid, mode="query", runId="r1", code="import time; time.sleep(2.5); print('slow')")
        assert first["status"] == "continued"
        runner, hub = km._runner, km.iopub
        assert runner is not None and runner._streams and hub is not None
        await asyncio.sleep(1.8)  # past the release time, with the run still going: all kept
        assert runner._streams and km.iopub is hub and not hub.closed
        deadline = time.monotonic() + 15
        while km.iopub is not None:  # the run ends, the runner lets go, then the hub
            assert time.monotonic() < deadline, "the idle v2 kernel's subscription was never let go"
            await asyncio.sleep(0.2)
        assert not runner._streams and hub.closed
        # The finished run's output was kept for the caller's next poll, and a new run loses nothing.
        last = await execute(gw, keys, kid, mode="continue", runId="r1", code="")
        assert last["status"] == "finished" and last["console"] == [["stdout", "slow\n"]]
        again = await execute(gw, keys, kid, mode="query", runId="r2", code="print(6 * 7)")
        assert again["status"] == "finished" and again["console"] == [["stdout", "42\n"]]
        assert runner._streams and km.iopub is not None and km.iopub is not hub
        status, _ = await signed(gw, keys, "DELETE", f"/v2/kernel/{kid}", b"")
        assert status in (200, 204)
