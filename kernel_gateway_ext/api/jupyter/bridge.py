"""The ZMQ side of the kernel websocket: one `ChannelBridge` per client session on a kernel.

A client session (the websocket's `session_id`) may have several websockets open at once, opened
and closed in any order: JupyterLab retries at once with the same session_id when its first
socket fails, jupyter_server in gateway mode can leave that first upstream socket open for good,
and a reconnect can arrive before the old socket is closed. So a bridge holds a list of sockets:

- a reply (and the iopub output of a request) goes to the socket that sent the request while it
  is open, else to the session's live socket: the one that most recently opened or sent;
- other iopub messages (requests of other sessions, the kernel's own) go to the live socket;
- every message goes to one socket of the session, never two; every session gets each of the
  kernel's iopub messages from the kernel's one subscription (kernels/iopub.py), so output
  reaches every session once;
- with no socket open, messages are kept (bounded by count and bytes) and replayed to the next
  socket of the session, as jupyter_server does for a reconnecting session.

The bridge, not each socket, listens to the kernel: a socket closing never detaches another. A new
session waits only when the kernel's subscription is not known live (one probe per kernel).
"""
from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from jupyter_client.session import DELIM, Session
from tornado.ioloop import IOLoop
from zmq.eventloop.zmqstream import ZMQStream

from ...errors import OverCapacity
from ...kernels.channels import kernel_stream, message_frames, parent_id
from ...kernels.iopub import IopubHub, hub_of
from ...kernels.manager import GatewayKernel, GatewayKernelManager

CLIENT_CHANNELS = ("shell", "control", "stdin")
MAX_SENDERS = 1024  # request ids remembered per session, to route replies to the socket that asked
MAX_SOCKETS = 8  # open websockets per session; beyond it the stalest is closed
MAX_MESSAGE = 64 * 2**20  # an output bigger than this is replaced by a note (one display() of GBs)


class Socket(Protocol):
    """What a bridge needs of a websocket (the channels handler)."""

    @property
    def is_open(self) -> bool: ...

    @property
    def is_behind(self) -> bool: ...

    def deliver(self, channel: str, parts: list[bytes]) -> None: ...

    def send_status(self, state: str) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Settings(Protocol):
    """What the registry reads of the gateway's configuration (the Gateway app)."""

    ws_buffer_seconds: float
    ws_buffer_messages: int
    ws_buffer_bytes: int
    ws_max_sessions: int
    kernel_manager: GatewayKernelManager


class ChannelBridge:
    """The kernel sockets of one client session, shared by that session's websockets."""

    def __init__(self, km: GatewayKernel, key: str, max_messages: int, max_bytes: int, ready_timeout: float) -> None:
        self.km = km
        self.key = key
        self.identity = uuid.uuid4().hex.encode()
        self.slot = key or "#" + self.identity.decode()  # where the registry keeps it
        self.ready_timeout = ready_timeout
        self.session = Session(key=km.session.key, signature_scheme=km.session.signature_scheme)
        self.streams: dict[str, ZMQStream] = {}
        self.hub: IopubHub | None = None  # the kernel's output subscription we read from
        self.sockets: list[Socket] = []  # the live one last
        self.senders: OrderedDict[str, Socket] = OrderedDict()
        self.buffer: deque[tuple[str, list[bytes], int]] = deque()
        self.buffered_bytes = 0
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.dropped = 0
        self.expiry: Any = None
        self.closed = False
        self.generation = -1
        self.connect()
        km.add_listener(self.on_kernel_event)

    # ---- sockets to the kernel ----------------------------------------------------------------
    def connect(self) -> None:
        """(Re)create the sockets to the kernel's current address."""
        self.close_streams()
        for channel in CLIENT_CHANNELS:
            stream = kernel_stream(self.km, channel, self.identity)
            stream.on_recv(partial(self._from_kernel, channel))
            self.streams[channel] = stream
        self.hub = hub_of(self.km)
        self.hub.subscribe(self._from_iopub)
        self.generation = self.km.generation

    def close_streams(self) -> None:
        for stream in self.streams.values():
            stream.close()
        self.streams = {}
        if self.hub is not None:
            self.hub.unsubscribe(self._from_iopub)
            self.hub = None

    # ---- kernel -> websockets -----------------------------------------------------------------
    def _from_iopub(self, parts: list[bytes]) -> None:
        self._from_kernel("iopub", parts)

    def _from_kernel(self, channel: str, parts: list[bytes]) -> None:
        size = sum(len(p) for p in parts)
        if size > MAX_MESSAGE and channel == "iopub":
            parts = self._stand_in(parts, size)
        parent = parent_id(self.session, parts)
        target = self.senders.get(parent) if parent is not None else None
        if target is None or not target.is_open:
            target = self.live
        if target is not None and not target.is_behind and not self.buffer:
            target.deliver(channel, parts)
            return
        self._keep(channel, parts)

    def _keep(self, channel: str, parts: list[bytes]) -> None:
        """Buffer for the session (no socket, or its socket is behind), oldest dropped past the bounds."""
        size = sum(len(p) for p in parts)
        self.buffer.append((channel, parts, size))
        self.buffered_bytes += size
        while len(self.buffer) > self.max_messages or self.buffered_bytes > self.max_bytes:
            self.buffered_bytes -= self.buffer.popleft()[2]
            self.dropped += 1

    def _stand_in(self, parts: list[bytes], size: int) -> list[bytes]:
        """A small stderr note in place of an output too large to hold and send (once per
        websocket, and again in the buffer): the cell shows why its output is missing."""
        try:
            fed = message_frames(self.session, parts)
            parent = json.loads(fed[2])
        except Exception:  # noqa: BLE001 - no parent to attach the note to
            parent = {}
        note = (f"[kernel_gateway_ext] an output of {size / 2**20:.0f} MiB was dropped: over the "
                f"{MAX_MESSAGE // 2**20} MiB limit of one message\n")
        msg = self.session.msg("stream", {"name": "stderr", "text": note}, parent=parent)
        return self.session.serialize(msg)

    @property
    def in_use(self) -> bool:
        """Has a socket, or is getting its first: not merely kept for a reconnect."""
        return bool(self.sockets) or self.expiry is None

    @property
    def live(self) -> Socket | None:
        return self.sockets[-1] if self.sockets else None

    # ---- websockets -> kernel -----------------------------------------------------------------
    def send(self, sender: Socket, channel: str, msg_id: str, parts: list[bytes]) -> None:
        """Send signed-ready parts [header, parent, metadata, content, *buffers] for `sender`."""
        self._remember(sender, msg_id)
        sig = self.session.sign(parts[:4])
        self.streams[channel].send_multipart([DELIM, sig, *parts])

    def send_msg(self, sender: Socket, channel: str, msg: dict[str, Any]) -> None:
        self._remember(sender, str(msg["header"].get("msg_id", "")))
        self.session.send(self.streams[channel], msg)

    def _remember(self, sender: Socket, msg_id: str) -> None:
        if sender in self.sockets and self.sockets[-1] is not sender:
            self.sockets.remove(sender)  # the socket the client uses now is the live one
            self.sockets.append(sender)
        if msg_id:
            self.senders[msg_id] = sender
            self.senders.move_to_end(msg_id)
            while len(self.senders) > MAX_SENDERS:
                self.senders.popitem(last=False)

    # ---- attach / detach ----------------------------------------------------------------------
    def attach(self, sock: Socket) -> None:
        """`sock` becomes the session's live socket and gets what was kept for the session."""
        if self.expiry is not None:
            IOLoop.current().remove_timeout(self.expiry)
            self.expiry = None
        if self.generation != self.km.generation:
            self.connect()
        self.sockets.append(sock)
        self.drained(sock)
        while len(self.sockets) > MAX_SOCKETS:
            self.sockets.pop(0).close(1000, "replaced by a newer connection of the same session")

    def drained(self, sock: Socket) -> None:
        """`sock` can take more: hand it what was kept, in order, while it keeps up."""
        if sock is not self.live:
            return
        while self.buffer and sock.is_open and not sock.is_behind:
            channel, parts, size = self.buffer.popleft()
            self.buffered_bytes -= size
            sock.deliver(channel, parts)

    def detach(self, sock: Socket) -> bool:
        """Forget a closed socket; True when the session has none left."""
        if sock in self.sockets:
            self.sockets.remove(sock)
        for msg_id in [m for m, s in self.senders.items() if s is sock]:
            del self.senders[msg_id]
        return not self.sockets

    # ---- kernel events ------------------------------------------------------------------------
    def on_kernel_event(self, event: str, data: dict[str, Any]) -> Any:
        if event == "dead":
            # Only a kernel that really died: a requested restart sends no status of ours
            # (JupyterLab reads `restarting` as "the kernel appears to have died").
            if self.live is not None:
                self.live.send_status("dead")
        elif event == "autorestarted":
            # The kernel died and is back (same id): what jupyter_server sends after its restarter
            # restarted a kernel. JupyterLab says the kernel died and reconnects.
            if self.live is not None:
                self.live.send_status("restarting")
        elif event == "moved":
            self.connect()
        elif event == "restarted":
            # Our iopub SUB reconnects to the new kernel up to 100 ms late; until it has, output
            # would be lost. The restart is answered once this returns.
            return self.ready()
        elif event == "shutdown":
            for sock in list(self.sockets):
                sock.close(1000, "kernel shut down")
        return None

    def ready(self) -> "asyncio.Future[None]":
        """Wait until the kernel's output subscription is live (ZMQ's slow joiner), so that a
        client's first output is not lost: at once when it is (a pooled kernel's, or one a session
        already probed); else one probe per kernel, shared by every session that waits."""
        return (self.hub or hub_of(self.km)).ready(self.ready_timeout)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.expiry is not None:
            IOLoop.current().remove_timeout(self.expiry)
            self.expiry = None
        self.km.remove_listener(self.on_kernel_event)
        self.sockets = []
        self.senders.clear()
        self.buffer.clear()
        self.close_streams()


class Bridges:
    """Every kernel's bridges, by client session. A socket without a session id gets a bridge of
    its own that closes with it; a named session's bridge outlives its last socket for
    `buffer_seconds`, so a reconnect gets what it missed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.by_kernel: dict[str, dict[str, ChannelBridge]] = {}
        self.on_close: list[Callable[[], None]] = []  # told when a session's sockets close (memory_trim)

    def admit(self, km: GatewayKernel, key: str) -> None:
        """Refuse a new client session when the kernel has `ws_max_sessions` with sockets open
        (each holds three ZMQ sockets, and a closed one is kept a while for its reconnect)."""
        bridges = self.by_kernel.get(km.kernel_id, {})
        limit = self.settings.ws_max_sessions
        if limit and (not key or key not in bridges) and sum(1 for b in bridges.values() if b.in_use) >= limit:
            raise OverCapacity(f"kernel {km.kernel_id} has its maximum of {limit} connected client sessions")

    def open(self, km: GatewayKernel, key: str) -> tuple[ChannelBridge, bool]:
        """The session's bridge (made if new) and whether it is new. At the limit, the session
        that has been disconnected longest makes room (its kept output is dropped)."""
        bridges = self.by_kernel.setdefault(km.kernel_id, {})
        limit = self.settings.ws_max_sessions
        if limit and (not key or key not in bridges) and len(bridges) >= limit:
            for slot, idle in list(bridges.items()):  # oldest first
                if not idle.in_use:
                    del bridges[slot]
                    self._close(idle)
                    if len(bridges) < limit:
                        break
        bridge = bridges.get(key) if key else None
        if bridge is not None and (bridge.km is not km or bridge.closed):
            self._close(bridge)
            bridge = None
        if bridge is not None:
            return bridge, False
        cfg = self.settings
        bridge = ChannelBridge(km, key, cfg.ws_buffer_messages, cfg.ws_buffer_bytes, cfg.kernel_manager.ready_timeout)
        bridges[bridge.slot] = bridge
        return bridge, True

    def release(self, bridge: ChannelBridge, sock: Socket) -> None:
        """A websocket closed: keep the session's sockets a while for a reconnect, or close them."""
        if not bridge.detach(sock) or bridge.closed:
            return
        kernel_bridges = self.by_kernel.get(bridge.km.kernel_id, {})
        kept = kernel_bridges.get(bridge.slot) is bridge and self.settings.kernel_manager.find(bridge.km.kernel_id) is bridge.km
        if not bridge.key or not kept:
            if kernel_bridges.get(bridge.slot) is bridge:
                del kernel_bridges[bridge.slot]
            self._close(bridge)
            return

        def expire() -> None:
            bridge.expiry = None
            if kernel_bridges.get(bridge.slot) is bridge and not bridge.sockets:
                del kernel_bridges[bridge.slot]
                self._close(bridge)

        bridge.expiry = IOLoop.current().call_later(self.settings.ws_buffer_seconds, expire)

    def forget_kernel(self, kernel_id: str) -> None:
        for bridge in self.by_kernel.pop(kernel_id, {}).values():
            self._close(bridge)

    def _close(self, bridge: ChannelBridge) -> None:
        bridge.close()
        for cb in self.on_close:
            cb()

    def close_all(self) -> None:
        for kernel_id in list(self.by_kernel):
            self.forget_kernel(kernel_id)
