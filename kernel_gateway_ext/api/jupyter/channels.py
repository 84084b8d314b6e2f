"""GET /api/kernels/ID/channels: the kernel websocket.

Each client session gets a `ChannelBridge`: its own ZMQ sockets to the kernel (shell, control and
stdin share one identity so input requests come back to it; iopub is its own SUB, so output
reaches every open websocket). A bridge outlives its websocket for `buffer_seconds`: a client
that reconnects with the same session_id gets what it missed. TCP_NODELAY is set on every
websocket (Kernel Gateway's missing it costs ~40 ms per execute).
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq
from jupyter_client.session import DELIM, Session
from tornado import websocket
from tornado.ioloop import IOLoop
from zmq.eventloop.zmqstream import ZMQStream

from ...errors import BadRequest
from ...kernels.manager import GatewayKernel, kernel_stream, zmq_url
from ..base import BaseHandler
from .wire import V1_SUBPROTOCOL, decode_legacy, decode_v1, encode_legacy, encode_legacy_raw, encode_v1

if TYPE_CHECKING:
    from ...app import Gateway

CLIENT_CHANNELS = ("shell", "control", "stdin")
NUDGE_FIRST, NUDGE_MAX = 0.02, 0.5  # seconds between probes, doubling

Sink = Callable[[str, list[bytes]], None]


class ChannelBridge:
    """The ZMQ side of one client session on one kernel."""

    def __init__(self, km: GatewayKernel, key: str, max_buffer: int) -> None:
        self.km = km
        self.key = key
        self.identity = uuid.uuid4().hex.encode()
        self.session = Session(key=km.session.key, signature_scheme=km.session.signature_scheme)
        self.streams: dict[str, ZMQStream] = {}
        self.sink: Sink | None = None
        self.buffer: deque[tuple[str, list[bytes]]] = deque(maxlen=max_buffer)
        self.dropped = 0
        self.expiry: Any = None
        self.nudge_ids: set[str] = set()
        self.iopub_seen: asyncio.Future[None] | None = None
        self.generation = -1
        self.connect()

    def connect(self) -> None:
        """(Re)create the sockets to the kernel's current address."""
        self.close_sockets()
        for channel in (*CLIENT_CHANNELS, "iopub"):
            stream = kernel_stream(self.km, channel, self.identity)
            stream.on_recv(lambda parts, ch=channel: self._from_kernel(ch, parts))
            self.streams[channel] = stream
        self.generation = self.km.generation

    def _from_kernel(self, channel: str, parts: list[bytes]) -> None:
        if channel == "iopub" and self.iopub_seen is not None:
            if not self.iopub_seen.done():
                self.iopub_seen.set_result(None)
            if self.nudge_ids and self._parent_id(parts) in self.nudge_ids:
                return  # the status of our own nudge is nobody's business
        if self.sink is not None:
            self.sink(channel, parts)
        else:
            if len(self.buffer) == self.buffer.maxlen:
                self.dropped += 1
            self.buffer.append((channel, parts))

    def _parent_id(self, parts: list[bytes]) -> str | None:
        try:
            _, fed = self.session.feed_identities(parts)
            return json.loads(fed[2]).get("msg_id")
        except Exception:  # noqa: BLE001
            return None

    async def nudge(self, timeout: float) -> None:
        """Wait until our iopub subscription receives messages (ZMQ's slow joiner): until then a
        client's first output could be lost. Sends kernel_info on a private socket until iopub
        shows activity."""
        loop = asyncio.get_running_loop()
        self.iopub_seen = loop.create_future()
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(zmq_url(self.km.get_connection_info(), "shell"))
        deadline = time.monotonic() + timeout
        interval = NUDGE_FIRST
        try:
            while not self.iopub_seen.done() and time.monotonic() < deadline:
                msg = self.session.msg("kernel_info_request")
                self.nudge_ids.add(msg["header"]["msg_id"])
                self.session.send(sock, msg)
                try:
                    await asyncio.wait_for(asyncio.shield(self.iopub_seen), interval)
                except asyncio.TimeoutError:
                    interval = min(interval * 2, NUDGE_MAX)
        finally:
            sock.close(0)
            self.iopub_seen = None
            # Statuses of late nudges are dropped for a moment more, then the ids are forgotten.
            ids = set(self.nudge_ids)
            IOLoop.current().call_later(2.0, lambda: self.nudge_ids.difference_update(ids))

    def attach(self, sink: Sink) -> None:
        if self.expiry is not None:
            IOLoop.current().remove_timeout(self.expiry)
            self.expiry = None
        if self.generation != self.km.generation:
            self.connect()
        while self.buffer:
            sink(*self.buffer.popleft())
        self.sink = sink

    def detach(self) -> None:
        self.sink = None

    def send(self, channel: str, parts: list[bytes]) -> None:
        """Send signed-ready parts [header, parent, metadata, content, *buffers]."""
        sig = self.session.sign(parts[:4])
        self.streams[channel].send_multipart([DELIM, sig, *parts])

    def send_msg(self, channel: str, msg: dict[str, Any]) -> None:
        self.session.send(self.streams[channel], msg)

    def close_sockets(self) -> None:
        for stream in self.streams.values():
            stream.close()
        self.streams = {}

    def close(self) -> None:
        if self.expiry is not None:
            IOLoop.current().remove_timeout(self.expiry)
            self.expiry = None
        self.sink = None
        self.close_sockets()


class ChannelsHandler(BaseHandler, websocket.WebSocketHandler):
    """The kernel websocket (legacy JSON, or the v1 binary subprotocol when asked for)."""

    km: GatewayKernel
    bridge: ChannelBridge | None = None
    v1 = False

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

    async def get(self, kernel_id: str) -> None:  # type: ignore[override]
        self.km = self.gateway.kernel_manager.get(kernel_id, self.identity.owner_filter())
        session_id = self.get_query_argument("session_id", "") or ""
        if len(session_id) > 256:
            raise BadRequest("session_id too long")
        self.session_key = f"{self.identity.user}:{session_id}" if session_id else ""
        await super().get(kernel_id)

    async def open(self, kernel_id: str) -> None:  # type: ignore[override]
        self.set_nodelay(True)
        gw: Gateway = self.gateway
        bridges = gw.bridges.setdefault(self.km.kernel_id, {})
        bridge = bridges.pop(self.session_key, None) if self.session_key else None
        if bridge is not None and bridge.km is not self.km:
            bridge.close()
            bridge = None
        fresh = bridge is None
        if bridge is None:
            bridge = ChannelBridge(self.km, self.session_key, gw.ws_buffer_messages)
        self.bridge = bridge
        if self.session_key:
            bridges[self.session_key] = bridge
        self.km.connections += 1
        self.km.add_listener(self.on_kernel_event)
        if fresh and self.km.execution_state not in ("dead", "restarting"):
            await bridge.nudge(gw.kernel_manager.ready_timeout)
        if bridge.dropped:
            self.gateway.log.warning("Session %s on kernel %s lost %s buffered messages",
                                     session_id_of(self.session_key), self.km.kernel_id, bridge.dropped)
            bridge.dropped = 0
        if self.ws_connection is None:  # closed while nudging
            return
        bridge.attach(self.to_client)
        if self.km.execution_state == "dead":
            self.send_status("dead")

    # ---- kernel -> client ---------------------------------------------------------------------
    def to_client(self, channel: str, parts: list[bytes]) -> None:
        if self.ws_connection is None or self.bridge is None:
            return
        session = self.bridge.session
        try:
            _, fed = session.feed_identities(parts)
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
            self.write_message(frame, binary=isinstance(frame, bytes))
        except websocket.WebSocketClosedError:
            pass

    def send_status(self, state: str) -> None:
        if self.bridge is None:
            return
        msg = self.bridge.session.msg("status", content={"execution_state": state})
        self.to_client("iopub", self.bridge.session.serialize(msg))

    def on_kernel_event(self, event: str, data: dict[str, Any]) -> Any:
        if event in ("dead", "restarting"):
            self.send_status(event)
        elif event == "moved" and self.bridge is not None:
            self.bridge.connect()
        elif event == "restarted" and self.bridge is not None:
            # Our iopub SUB reconnects to the new kernel up to 100 ms late; until it has, output
            # would be lost. The restart is answered once this returns.
            return self.bridge.nudge(self.gateway.kernel_manager.ready_timeout)
        elif event == "shutdown":
            self.close(1000, "kernel shut down")
        return None

    # ---- client -> kernel ---------------------------------------------------------------------
    def on_message(self, message: str | bytes) -> None:
        bridge = self.bridge
        if bridge is None:
            return
        try:
            if self.v1:
                if not isinstance(message, bytes):
                    raise ValueError("v1 frames are binary")
                channel, parts = decode_v1(message)
                if channel in CLIENT_CHANNELS:
                    bridge.send(channel, parts)
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
                    bridge.send_msg(channel, msg)
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
            self.gateway.log.warning("Kernel %s: dropped a malformed client message (%s)", self.km.kernel_id, e)
            return
        self.km.touch()

    def on_close(self) -> None:
        bridge, self.bridge = self.bridge, None
        if bridge is None:
            return
        self.km.remove_listener(self.on_kernel_event)
        self.km.connections = max(0, self.km.connections - 1)
        self.gateway.release_bridge(bridge)


def session_id_of(key: str) -> str:
    return key.partition(":")[2]
