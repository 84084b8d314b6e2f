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
