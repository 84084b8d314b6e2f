"""GET /v2/stream/kernel/ID/pty: a terminal (bash) in the kernel's container, over a websocket.

Client frames: {"type": "stdin", "chars": base64}, {"type": "resize", "rows", "cols"},
{"type": "ping"}, {"type": "restart"}. Server frames: {"type": "out", "data": base64},
{"type": "pong"}. The terminal is a `docker exec` with a TTY; its socket is read by the event
loop itself (add_reader), so no thread waits on it.
"""
from __future__ import annotations

import asyncio
import base64
import json
import socket
from typing import Any

from tornado import websocket

from ...auth import hmac_v2
from ...errors import BadRequest, KernelDead
from ...kernels.manager import GatewayKernel
from .base import V2Handler


class PtyHandler(V2Handler, websocket.WebSocketHandler):
    km: GatewayKernel
    exec_id: str | None = None
    sock: socket.socket | None = None
    _holder: Any = None

    def set_default_headers(self) -> None:
        pass

    async def prepare(self) -> None:
        self.identity = await hmac_v2.verify(self.request, self.gateway.keypairs)

    async def get(self, kernel_id: str) -> None:  # type: ignore[override]
        self.km = self.gateway.kernel_manager.get_by_id_or_token(kernel_id, self.identity.owner_filter())
        if self.km.docker is None:
            raise BadRequest("a terminal needs a container kernel")
        if self.km.execution_state == "dead":
            raise KernelDead("the kernel is dead; restart it")
        await super().get(kernel_id)

    async def open(self, kernel_id: str) -> None:  # type: ignore[override]
        self.set_nodelay(True)
        await self.start_shell()

    async def start_shell(self) -> None:
        prov = self.km.docker
        assert prov is not None and prov.container_id is not None
        engine = prov.engine
        created = await engine.api(
            "exec_create", prov.container_id, ["/bin/bash", "-l"], stdin=True, tty=True, user=prov.user,
            workdir=prov.work_dir, environment={**prov._container_env(), "TERM": "xterm-256color"},
        )
        self.exec_id = created["Id"]
        holder = await engine.api("exec_start", self.exec_id, tty=True, socket=True)
        raw: socket.socket = getattr(holder, "_sock", holder)
        raw.setblocking(False)
        self._holder, self.sock = holder, raw
        asyncio.get_running_loop().add_reader(raw.fileno(), self._readable)

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
            self.write_message(json.dumps({"type": "out", "data": base64.b64encode(data).decode()}))
        except websocket.WebSocketClosedError:
            self.stop_shell()

    def stop_shell(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                asyncio.get_running_loop().remove_reader(sock.fileno())
            except (ValueError, OSError):
                pass
            sock.close()
        if self._holder is not None:
            try:
                self._holder.close()
            except OSError:
                pass
            self._holder = None

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
        elif kind == "resize" and self.exec_id:
            rows, cols = msg.get("rows"), msg.get("cols")
            if isinstance(rows, int) and isinstance(cols, int) and 0 < rows < 1000 and 0 < cols < 1000:
                await self.km.docker.engine.api("exec_resize", self.exec_id, height=rows, width=cols)  # type: ignore[union-attr]
        elif kind == "ping":
            self.write_message(json.dumps({"type": "pong"}))
        elif kind == "restart":
            self.stop_shell()
            await self.start_shell()

    def on_close(self) -> None:
        self.stop_shell()
