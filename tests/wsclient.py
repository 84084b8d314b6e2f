"""A minimal kernel websocket client for tests (legacy JSON or v1 binary)."""
from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timezone
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from kernel_gateway_ext.api.jupyter.wire import V1_SUBPROTOCOL, decode_v1, encode_v1


class KernelWS:
    def __init__(self, conn: WebSocketClientConnection, v1: bool, session: str) -> None:
        self.conn = conn
        self.v1 = v1
        self.session = session
        self.inbox: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, base: str, kernel_id: str, token: str | None, *, v1: bool = False,
                      session: str | None = None, via_query: bool = False, scheme: str = "Bearer") -> "KernelWS":
        session = session or uuid.uuid4().hex
        url = base.replace("http", "ws", 1).rstrip("/") + f"/api/kernels/{kernel_id}/channels?session_id={session}"
        headers = {}
        if token and via_query:
            url += f"&token={token}"
        elif token:
            headers["Authorization"] = f"{scheme} {token}"
        req = HTTPRequest(url, headers=headers, request_timeout=60)
        conn = await websocket_connect(req, subprotocols=[V1_SUBPROTOCOL] if v1 else None)
        return cls(conn, v1, session)

    def msg(self, msg_type: str, content: dict[str, Any], channel: str = "shell", date_as_number: bool = False) -> dict[str, Any]:
        now = datetime.now(timezone.utc)
        header = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "test", "session": self.session,
                  "date": now.timestamp() if date_as_number else now.isoformat(), "version": "5.3"}
        return {"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": channel}

    async def send(self, msg: dict[str, Any], omit_channel: bool = False) -> str:
        if self.v1:
            channel = msg.get("channel", "shell")
            parts = [json.dumps(msg[k]).encode() for k in ("header", "parent_header", "metadata", "content")]
            await self.conn.write_message(encode_v1(channel, parts), binary=True)
        else:
            body = dict(msg)
            if omit_channel:
                body.pop("channel", None)
            await self.conn.write_message(json.dumps(body))
        return msg["header"]["msg_id"]

    async def recv(self, timeout: float = 30) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.conn.read_message(), timeout)
        if frame is None:
            raise ConnectionError("websocket closed")
        if self.v1:
            channel, parts = decode_v1(frame)
            msg = {k: json.loads(p) for k, p in zip(("header", "parent_header", "metadata", "content"), parts)}
            msg["channel"] = channel
            msg["msg_type"] = msg["header"]["msg_type"]
            return msg
        msg = json.loads(frame)
        return msg

    async def kernel_info(self, timeout: float = 30) -> dict[str, Any]:
        """What JupyterLab does once its websocket is open: ask kernel_info and wait for the reply.
        Once it is back, this session hears all later output (the gateway subscribes a session's
        iopub before it hands the session its first message); the socket's open alone does not say so."""
        msg_id = await self.send(self.msg("kernel_info_request", {}))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            m = await self.recv(timeout=max(0.1, deadline - loop.time()))
            if m["channel"] == "shell" and m.get("parent_header", {}).get("msg_id") == msg_id:
                return dict(m["content"])
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                self.inbox.append(m)

    async def execute(self, code: str, *, stdin: str | None = None, timeout: float = 60,
                      omit_channel: bool = False, date_as_number: bool = False) -> dict[str, Any]:
        """Run code; collect iopub output and the reply until the kernel is idle again."""
        msg = self.msg("execute_request", {"code": code, "silent": False, "store_history": True,
                                           "user_expressions": {}, "allow_stdin": stdin is not None,
                                           "stop_on_error": True}, date_as_number=date_as_number)
        msg_id = await self.send(msg, omit_channel=omit_channel)
        result: dict[str, Any] = {"outputs": [], "reply": None, "idle": False, "msg_id": msg_id}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (result["reply"] and result["idle"]):
            m = await self.recv(timeout=max(0.1, deadline - loop.time()))
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                self.inbox.append(m)
                continue
            t = m["header"]["msg_type"]
            if m["channel"] == "stdin" and t == "input_request":
                reply = self.msg("input_reply", {"value": stdin}, channel="stdin")
                reply["parent_header"] = m["header"]
                await self.send(reply)
            elif m["channel"] == "shell" and t == "execute_reply":
                result["reply"] = m["content"]
            elif t == "status":
                result["idle"] = m["content"]["execution_state"] == "idle"
            elif m["channel"] == "iopub" and t not in ("execute_input",):
                result["outputs"].append({"type": t, **m["content"]})
        return result

    def stdout(self, result: dict[str, Any]) -> str:
        return "".join(o["text"] for o in result["outputs"] if o["type"] == "stream" and o["name"] == "stdout")

    def close(self) -> None:
        self.conn.close()
