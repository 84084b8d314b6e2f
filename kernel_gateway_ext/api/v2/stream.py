"""GET /v2/stream/kernel/ID/pty: a terminal (bash) in the kernel's container, over a websocket.

Client frames: {"type": "stdin", "chars": base64}, {"type": "resize", "rows", "cols"},
{"type": "ping"}, {"type": "restart"}. Server frames: {"type": "out", "data": base64},
{"type": "pong"}. The terminal is an exec with a TTY in the kernel's container (containers/runtime.py);
its socket is read by the event loop itself (add_reader), so no thread waits on it. Reading pauses while the client has not taken
what was sent (the pty then fills and the shell waits: back-pressure, no buffer grows), and a
shell that is left (restart, close) is hung up: the engine keeps an exec running after its
client goes, so each shell carries a marker in its environment to be found by.
"""
from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
from typing import Any

from tornado import websocket

from ...containers.backend import Terminal
from ...errors import BadRequest, KernelDead, OverCapacity
from ...kernels.manager import GatewayKernel
from ...tasks import TaskSet
from .base import V2Handler


MARKER = "KGE_TERMINAL"
# Hang up every process of one terminal (found by its environment marker; no procps needed).
HANG_UP_RETRIES = (0.05, 0.2, 0.5, 1.0, 2.0)  # seconds after each scan before asking the engine again
HANG_UPS = TaskSet(None, "terminal hang-up")  # held until done (asyncio keeps tasks by weak reference)
HANGUP = ('for p in /proc/[0-9]*; do grep -qzx "' + MARKER + '=$0" "$p/environ" 2>/dev/null '
          '&& kill -HUP "${p#/proc/}" 2>/dev/null; done; true')


class PtyHandler(V2Handler, websocket.WebSocketHandler):
    record_kind = "kernel"
    by_token = True
    km: GatewayKernel
    tty: Terminal | None = None
    sock: socket.socket | None = None
    marker: str | None = None
    _paused = False

    def set_default_headers(self) -> None:
        pass

    async def get(self, kernel_id: str) -> None:
        self.km = self.owned_kernel(kernel_id, by_token=True, action="execute")
        if self.km.docker is None:
            raise BadRequest("a terminal needs a container kernel")
        if self.km.execution_state == "dead":
            raise KernelDead("the kernel is dead; restart it")
        open_now = self.gateway.terminals.setdefault(self.km.kernel_id, set())
        limit = self.gateway.max_terminals
        if limit and len(open_now) >= limit:
            raise OverCapacity(f"this kernel has {len(open_now)} terminals open (at most {limit}); close one")
        open_now.add(self)
        try:
            await super().get(kernel_id)
        finally:
            if self.ws_connection is None:  # the upgrade failed: on_close will not come
                self._forget()

    def _forget(self) -> None:
        terminals = self.gateway.terminals
        open_now = terminals.get(self.km.kernel_id)
        if open_now is not None:
            open_now.discard(self)
            if not open_now:
                terminals.pop(self.km.kernel_id, None)

    async def open(self, kernel_id: str) -> None:
        self.set_nodelay(True)
        await self.start_shell()

    async def start_shell(self) -> None:
        prov = self.km.docker
        assert prov is not None and prov.container_id is not None
        self.marker = secrets.token_hex(8)
        self.tty = await prov.container.open_terminal({"TERM": "xterm-256color", MARKER: self.marker})
        self.sock = self.tty.sock
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the shell exited
            self.stop_shell()
            self.close(1000, "terminal closed")
            return
        try:
            sent = self.write_message(json.dumps({"type": "out", "data": base64.b64encode(data).decode()}))
        except websocket.WebSocketClosedError:
            self.stop_shell()
            return
        if not sent.done():  # the client is behind: read no more until it has taken this
            self._paused = True
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sent.add_done_callback(lambda _: self._resume(sock))

    def _resume(self, sock: socket.socket) -> None:
        if self._paused and self.sock is sock:
            self._paused = False
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def stop_shell(self) -> None:
        sock, self.sock = self.sock, None
        self._paused = False
        if sock is not None:
            try:
                asyncio.get_running_loop().remove_reader(sock.fileno())
            except (ValueError, OSError):
                pass
        tty, self.tty = self.tty, None
        if tty is not None:
            tty.close()
        marker, self.marker = self.marker, None
        prov = self.km.docker
        if marker is not None and tty is not None and prov is not None and prov.container_id is not None:
            HANG_UPS.spawn(self._hang_up(prov, tty, marker))

    @staticmethod
    async def _hang_up(prov: Any, tty: Terminal, marker: str) -> None:
        """The engine leaves an exec running when its client goes: end the shell and its jobs. A
        scan for the marker can miss a shell the engine has not started yet (it answers the exec's
        socket first), so the scan is repeated until the engine says the shell has ended."""
        try:
            for delay in HANG_UP_RETRIES:
                await prov.container.run_quietly(["/bin/sh", "-c", HANGUP, marker])
                await asyncio.sleep(delay)
                if await tty.ended():
                    return
            prov.log.warning("a terminal's shell did not end when it was hung up (marker %s)", marker)
        except Exception as e:  # noqa: BLE001 - the container may be gone already: nothing to hang up
            prov.log.debug("terminal hang-up skipped: %s", e)

    async def on_message(self, message: str | bytes) -> None:
        try:
            msg = json.loads(message)
            kind = msg.get("type") if isinstance(msg, dict) else None
        except (ValueError, RecursionError):
            return
        if kind == "stdin" and self.sock is not None:
            try:
                data = base64.b64decode(msg.get("chars", ""), validate=True)
            except ValueError:
                return
            await asyncio.get_running_loop().sock_sendall(self.sock, data)
        elif kind == "resize" and self.tty is not None:
            rows, cols = msg.get("rows"), msg.get("cols")
            if isinstance(rows, int) and isinstance(cols, int) and 0 < rows < 1000 and 0 < cols < 1000:
                await self.tty.resize(rows, cols)
        elif kind == "ping":
            self.write_message(json.dumps({"type": "pong"}))
        elif kind == "restart":
            self.stop_shell()
            await self.start_shell()

    def on_close(self) -> None:
        self.stop_shell()
        self._forget()
