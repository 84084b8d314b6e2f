"""The HTTP server: Tornado's, with what a server facing untrusted clients needs on top.

- connection caps, in all and per client address: past them a new connection is closed at once
  (Tornado has none: a client opening sockets until the gateway runs out of descriptors would
  lock everyone out);
- a header deadline and a body deadline (Tornado waits an hour for a header: slowloris);
- a small body limit for every route; the few routes that take uploads raise it for their own
  request only after the caller is authenticated (`StreamedBody` in api/base.py).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from tornado import httpserver, iostream
from traitlets import Float, HasTraits, Int

from ..config import env


class ServerSettings(HasTraits):
    """The HTTP and websocket bounds (options of the application: Gateway.max_connections, …)."""

    ws_buffer_seconds = env(
        Float(60.0, help="Seconds a disconnected client session's output is kept for its reconnect."),
        "KGE_WS_BUFFER_SECONDS",
    )
    ws_buffer_messages = env(
        Int(10000, help="Most messages kept for a disconnected client session."), "KGE_WS_BUFFER_MESSAGES"
    )
    ws_max_sessions = env(
        Int(32, help="Client sessions (websocket session_ids) connected to one kernel at once; more are refused "
                     "(429). Each holds the kernel's sockets open. 0: no limit."),
        "KGE_WS_MAX_SESSIONS",
    )
    ws_buffer_bytes = env(
        Int(32 * 1024 * 1024, help="Most bytes of messages kept for a disconnected client session "
                                   "(the oldest go first)."),
        "KGE_WS_BUFFER_BYTES",
    )
    ws_max_unsent_bytes = env(
        Int(16 * 1024 * 1024, help="Bytes a kernel websocket may have sent that its client has not taken; past "
                                   "this it gets no more until it drains, and its output waits in the session's "
                                   "bounded buffer. 0: no limit."),
        "KGE_WS_MAX_UNSENT_BYTES",
    )
    max_request_body = env(
        Int(4 * 1024 * 1024, help="Largest request body (bytes) on every route but uploads; Tornado reads a body "
                                  "before the handler runs, so this is what an unauthenticated caller can send."),
        "KGE_MAX_REQUEST_BODY",
    )
    max_upload_body = env(
        Int(64 * 1024 * 1024, help="Largest body of an upload (v2 kernel and folder uploads, the notebook proxy), "
                                   "read only after the caller is authenticated."),
        "KGE_MAX_UPLOAD_BODY",
    )
    header_timeout = env(
        Float(30.0, help="Seconds a client has to send a request's headers (and an idle keep-alive connection "
                         "stays open): a client trickling bytes must not hold a connection for an hour."),
        "KGE_HEADER_TIMEOUT",
    )
    body_timeout = env(
        Float(300.0, help="Seconds a client has to send a request's body."), "KGE_BODY_TIMEOUT"
    )
    stop_grace = env(
        Float(10.0, help="Seconds a stop (SIGTERM) waits for the HTTP requests being served to finish before it "
                         "closes their connections; new ones get 503 meanwhile, which balancers and clients send "
                         "elsewhere or again. Websockets are closed at once (clients reconnect)."),
        "KGE_STOP_GRACE",
    )
    max_connections = env(
        Int(4000, help="Open client connections (websockets included) at once; past it new ones are closed. "
                       "0: no limit."),
        "KGE_MAX_CONNECTIONS",
    )
    max_connections_per_address = env(
        Int(500, help="Open client connections from one address at once (behind a proxy every client shares "
                      "its address: raise it or set 0). 0: no limit."),
        "KGE_MAX_CONNECTIONS_PER_ADDRESS",
    )
    page_sample_seconds = env(
        Float(3.0, help="Seconds between the web page's readings of memory and CPU (only while a page is open)."),
        "KGE_PAGE_SAMPLE_SECONDS",
    )
    max_terminals = env(
        Int(8, help="Terminals (v2 pty streams) open on one kernel at once; more are refused. 0: no limit."),
        "KGE_MAX_TERMINALS",
    )




class BoundedHTTPServer(httpserver.HTTPServer):
    """HTTPServer that refuses connections past `max_connections` / `max_per_address`."""

    def initialize(self, *args: Any, max_connections: int = 0, max_per_address: int = 0, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.open_connections = 0
        self.per_address: Counter[str] = Counter()
        self.refused = 0

    def handle_stream(self, stream: iostream.IOStream, address: Any) -> None:
        peer = str(address[0]) if isinstance(address, tuple) and address else "local"
        if (self.max_connections and self.open_connections >= self.max_connections) or (
                self.max_per_address and self.per_address[peer] >= self.max_per_address):
            self.refused += 1
            stream.close()
            return
        self.open_connections += 1
        self.per_address[peer] += 1
        self._count_until_closed(stream, peer)
        super().handle_stream(stream, address)

    def _count_until_closed(self, stream: iostream.IOStream, peer: str) -> None:
        # Every way a stream ends goes through its close() (errors included), also after a websocket
        # upgrade has taken the stream from the HTTP connection: that is where the count drops.
        close = stream.close
        counted = [True]

        def closing(exc_info: Any = False) -> None:
            if counted[0]:
                counted[0] = False
                self.open_connections -= 1
                self.per_address[peer] -= 1
                if self.per_address[peer] <= 0:
                    del self.per_address[peer]
            close(exc_info)

        stream.close = closing  # type: ignore[method-assign]
