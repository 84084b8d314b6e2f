"""The requests a stop waits for: counted from `prepare` until their answer is finished or their
client left, websockets never. A real Tornado server with BaseHandler subclasses, no Docker."""
from __future__ import annotations

import asyncio
import socket

from tornado import httpclient, web, websocket
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from kernel_gateway_ext.api.base import BaseHandler
from kernel_gateway_ext.api.inflight import InFlight


class Log:
    def warning(self, *a: object) -> None:
        pass

    error = warning


class Slow(BaseHandler):
    auth_required = False

    async def get(self, seconds: str) -> None:
        await asyncio.sleep(float(seconds))
        self.write_json({"slept": float(seconds)})


class Socket(BaseHandler, websocket.WebSocketHandler):
    auth_required = False

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message)


async def test_a_request_counts_until_it_is_answered_or_its_client_leaves_and_a_websocket_never() -> None:
    gateway = type("G", (), {"log": Log(), "stopping": False, "in_flight": InFlight()})()
    app = web.Application([(r"/slow/([\d.]+)", Slow), (r"/ws", Socket)], gateway=gateway)
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    url = f"http://127.0.0.1:{port}"
    try:
        answer = asyncio.ensure_future(httpclient.AsyncHTTPClient().fetch(f"{url}/slow/0.5"))
        await asyncio.sleep(0.2)
        assert gateway.in_flight.count == 1
        assert await gateway.in_flight.finished(0.05) == 1  # still being served: the grace ran out
        assert await gateway.in_flight.finished(5) == 0  # and then it was answered
        assert (await answer).code == 200

        ws = await websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws")
        await ws.write_message("x")
        assert await ws.read_message() == "x"
        assert gateway.in_flight.count == 0  # open for hours: a stop closes it instead
        ws.close()

        # A client that leaves mid-request is not waited for.
        raw = socket.create_connection(("127.0.0.1", port))
        raw.sendall(b"GET /slow/30 HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.2)
        assert gateway.in_flight.count == 1
        raw.close()
        assert await gateway.in_flight.finished(5) == 0
    finally:
        server.stop()
        await server.close_all_connections()
