"""Asking a kernel process directly, on sockets of our own: is it ready, why did it die, has the old
process let go (a restart must not be reported ready by the process it replaces)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session
from zmq.utils.monitor import parse_monitor_message

from ..errors import KernelStartFailed
from .channels import zmq_url
from .kernel import GatewayKernel

READY_RECONNECT_MS = 5


async def wait_ready(km: GatewayKernel, timeout: float) -> None:
    """Wait for a kernel_info_reply on a fresh shell socket.

    Not jupyter_client's wait_for_ready: that one adds ~0.4 s of iopub flushing to every
    start. A queued request reaches the kernel as soon as it binds; it is re-sent each second
    in case the first went to a previous kernel process.
    """
    info = km.get_connection_info()
    session = Session(key=km.session.key, signature_scheme=km.session.signature_scheme)
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    # The kernel binds its ports a few hundred ms after its container starts; until then each
    # connection attempt is refused and retried after reconnect_ivl (100 ms by default, which
    # added 50 ms to a start on average).
    sock.reconnect_ivl = READY_RECONNECT_MS
    sock.connect(zmq_url(info, "shell"))
    deadline = time.monotonic() + timeout
    try:
        while True:
            msg = session.msg("kernel_info_request")
            session.send(sock, msg)
            tick = time.monotonic() + 1.0
            while (left := min(tick, deadline) - time.monotonic()) > 0:
                if not await sock.poll(left * 1000):
                    break
                parts = await sock.recv_multipart()
                _, fed = session.feed_identities(parts)
                reply = session.deserialize(fed, content=False)
                if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                    return
            if not await km.is_alive():
                raise KernelStartFailed(f"kernel died before it was ready ({await death_reason(km)})")
            if time.monotonic() >= deadline:
                raise KernelStartFailed(f"kernel did not answer within {timeout:.0f} s")
    finally:
        sock.close(0)


async def death_reason(km: GatewayKernel) -> str:
    prov = km.docker
    if prov is None:
        return "process exited"
    code = await prov.poll()
    if prov.oom_killed:
        return "killed: out of memory"
    tail = (await prov.container.logs(tail=20)).strip().splitlines()
    if tail:  # the whole tail for the operator (a traceback); the caller is told its last line
        km.log.warning("Kernel %s exited with %s; its last output:\n%s", km.kernel_id, code, "\n".join(tail))
    last = tail[-1][:200] if tail else ""
    return f"exit code {code}" + (f": {last}" if last else "")


async def process_exit_watch(km: GatewayKernel, timeout: float = 10.0) -> asyncio.Future[None]:
    """A future that resolves when the current kernel process drops its ZMQ connections.

    A restart must not be reported ready by the old process: it still answers kernel_info
    while it shuts down. A socket monitor tells, without polling, when its TCP connection
    closes. If no kernel process is connected (a dead container) it resolves at once.
    """
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    sock.connect(zmq_url(km.get_connection_info(), "control"))

    def close() -> None:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)

    async def next_event(wait: float) -> int | None:
        if not await monitor.poll(wait * 1000):
            return None
        return int(parse_monitor_message(await monitor.recv_multipart())["event"])

    async def watch() -> None:
        try:
            await asyncio.wait_for(_until(next_event, zmq.EVENT_DISCONNECTED, timeout), timeout)
        except asyncio.TimeoutError:
            km.log.warning("Kernel %s: old process did not let go within %ss", km.kernel_id, timeout)
        finally:
            close()

    connected = await next_event(0.5 if km.execution_state != "dead" else 0.0)
    if connected != zmq.EVENT_HANDSHAKE_SUCCEEDED:
        close()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done
    return asyncio.ensure_future(watch())


async def _until(next_event: Callable[[float], Any], event: int, timeout: float) -> None:
    while await next_event(timeout) not in (event, None):
        pass
