"""GET /api/kernels/ID/channels: the kernel websocket.

The websocket side only: authentication, the two encodings (legacy JSON, or the v1 binary
subprotocol when the client offers it) and TCP_NODELAY on every socket (Kernel Gateway's missing
it costs ~40 ms per execute). Routing between a client session's sockets and the kernel, and
keeping output for a reconnect, is the session's `ChannelBridge` (bridge.py).
"""
from __future__ import annotations

import json
from typing import Any

from tornado import websocket

from ...errors import BadRequest
from ...kernels.channels import message_frames
from ...kernels.manager import GatewayKernel
from ..base import BaseHandler
from .bridge import CLIENT_CHANNELS, ChannelBridge
from .wire import V1_SUBPROTOCOL, decode_legacy, decode_v1, encode_legacy, encode_legacy_raw, encode_v1


class ChannelsHandler(BaseHandler, websocket.WebSocketHandler):
    """The kernel websocket (legacy JSON, or the v1 binary subprotocol when asked for)."""
    record_kind = "kernel"

    km: GatewayKernel
    bridge: ChannelBridge | None = None
    v1 = False
    unsent = 0  # bytes written to this socket that the client has not taken yet

    def set_default_headers(self) -> None:
        pass  # no JSON content type on a 101 response

    def check_origin(self, origin: str) -> bool:
        allowed = self.gateway.allow_origin
        return allowed == "*" or origin == allowed or super().check_origin(origin)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        self.v1 = V1_SUBPROTOCOL in subprotocols
        return V1_SUBPROTOCOL if self.v1 else None

    def get_compression_options(self) -> dict[str, Any] | None:
        return None

    async def get(self, kernel_id: str) -> None:
        self.km = self.owned_kernel(kernel_id, action="execute")
        session_id = self.get_query_argument("session_id", "") or ""
        if len(session_id) > 256:
            raise BadRequest("session_id too long")
        self.session_key = f"{self.identity.user}:{session_id}" if session_id else ""
        self.gateway.bridges.admit(self.km, self.session_key)  # before the upgrade: a plain 429
        await super().get(kernel_id)

    async def open(self, kernel_id: str) -> None:
        self.set_nodelay(True)
        bridge, fresh = self.gateway.bridges.open(self.km, self.session_key)
        self.bridge = bridge
        self.km.connections += 1
        if fresh and self.km.execution_state not in ("dead", "restarting"):
            await bridge.ready()
        if bridge.dropped:
            self.gateway.log.warning("Session %s on kernel %s lost %s buffered messages",
                                     session_id_of(self.session_key), self.km.kernel_id, bridge.dropped)
            bridge.dropped = 0
        if self.ws_connection is None or bridge.closed:  # closed while waiting
            return
        bridge.attach(self)
        state = self.km.execution_state
        if state == "dead" or (not fresh and state in ("idle", "busy")):
            # A reconnecting session (JupyterLab after a restart or a lost connection) is told the
            # kernel's state: the statuses of its kernel_info probe are untracked for JupyterLab,
            # which otherwise shows "Unknown" until the next execution (as it does with stock
            # jupyter_server after the kernel died).
            self.send_status(state)

    # ---- kernel -> client (called by the bridge) ----------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.ws_connection is not None and self.bridge is not None

    def deliver(self, channel: str, parts: list[bytes]) -> None:
        if not self.is_open:
            return
        session = self.bridge.session  # type: ignore[union-attr]
        try:
            fed = message_frames(session, parts)
            if self.v1:
                frame: str | bytes = encode_v1(channel, fed[1:])
            elif len(fed) == 5:  # no buffers: splice the JSON as it came (fast path)
                frame = encode_legacy_raw(channel, fed[1:])
            else:
                msg = session.deserialize(fed)
                msg["channel"] = channel
                frame = encode_legacy(msg)
        except Exception:  # noqa: BLE001 - a malformed kernel message is dropped, not fatal
            self.gateway.log.warning("Dropped a malformed message from kernel %s", self.km.kernel_id)
            return
        if channel == "iopub":
            self.km.touch()
        try:
            sent = self.write_message(frame, binary=isinstance(frame, bytes))
        except websocket.WebSocketClosedError:
            return
        if not sent.done():
            self._count_unsent(sent, len(frame))

    @property
    def is_behind(self) -> bool:
        """The client has not taken ws_max_unsent_bytes of what was written: send it no more for
        now (a stalled tab or slow link must not grow the gateway); the bridge keeps the rest in
        its bounded buffer and hands it over when this socket drains."""
        limit = self.gateway.ws_max_unsent_bytes
        return bool(limit) and self.unsent > limit

    def _count_unsent(self, sent: Any, size: int) -> None:
        self.unsent += size

        def taken(_: Any) -> None:
            was_behind = self.is_behind
            self.unsent -= size
            if was_behind and not self.is_behind and self.bridge is not None:
                self.bridge.drained(self)

        sent.add_done_callback(taken)

    def send_status(self, state: str) -> None:
        if self.bridge is None:
            return
        msg = self.bridge.session.msg("status", content={"execution_state": state})
        self.deliver("iopub", self.bridge.session.serialize(msg))

    # ---- client -> kernel ---------------------------------------------------------------------
    def on_message(self, message: str | bytes) -> None:
        bridge = self.bridge
        if bridge is None or bridge.closed:
            return
        try:
            if self.v1:
                if not isinstance(message, bytes):
                    raise ValueError("v1 frames are binary")
                channel, parts = decode_v1(message)
                header = json.loads(parts[0])
                if not isinstance(header, dict):
                    raise ValueError("header is not an object")
                if channel in CLIENT_CHANNELS:
                    bridge.send(self, channel, str(header.get("msg_id", "")), parts)
            else:
                msg = decode_legacy(message)
                channel = msg.pop("channel", None) or "shell"
                header = msg.get("header")
                if not isinstance(header, dict) or "msg_type" not in header:
                    raise ValueError("message has no header.msg_type")
                if channel in CLIENT_CHANNELS:
                    for key in ("parent_header", "metadata", "content"):
                        if not isinstance(msg.get(key), dict):
                            msg[key] = {}
                    bridge.send_msg(self, channel, msg)
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, RecursionError) as e:
            self.gateway.log.warning("Kernel %s: dropped a malformed client message (%s)", self.km.kernel_id, e)
            return
        self.km.touch()

    def on_close(self) -> None:
        bridge, self.bridge = self.bridge, None
        if bridge is None:
            return
        self.km.connections = max(0, self.km.connections - 1)
        self.gateway.bridges.release(bridge, self)


def session_id_of(key: str) -> str:
    return key.partition(":")[2]
