"""The HTTP server against clients that hold on: bodies before authentication, headers sent a byte
at a time (slowloris), and more connections than the gateway can serve."""
from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from urllib.parse import urlsplit

from tests.api.test_v2_auth_and_input import multipart, signed
from tests.clients.v2util import create_keys
from tests.conftest import TOKEN


async def open_socket(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.setblocking(False)
    return sock


async def read_reply(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes or `timeout` passes (b"" if it closed saying nothing)."""
    loop = asyncio.get_running_loop()
    got = b""
    end = loop.time() + timeout
    while (left := end - loop.time()) > 0:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), left)
        except asyncio.TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
        if b"\r\n\r\n" in got and not got.startswith(b"HTTP/1.1 1"):
            break
    return got


async def test_large_bodies_wait_for_authentication(gateway) -> None:
    loop = asyncio.get_running_loop()
    host = urlsplit(gateway.url).netloc
    # an anonymous 60 MiB upload is refused on its headers, before a byte of its body is read
    sock = await open_socket(gateway.url)
    await loop.sock_sendall(sock, (f"POST /v2/folders/x/upload HTTP/1.1\r\nHost: {host}\r\n"
                                   "Content-Type: multipart/form-data; boundary=b\r\n"
                                   f"Content-Length: {60 * 2**20}\r\n\r\n").encode())
    reply = await read_reply(sock, 10)
    sock.close()
    # before: the gateway waited for the 60 MiB (any caller could make it read 64 MiB per request)
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    # every other route takes at most max_request_body, even from the operator
    r = await gateway.client.fetch("POST", "/api/kernels", {"name": "python3", "pad": "x" * (5 * 2**20)})
    assert r.status in (400, 413), r.status
    # an authenticated upload may still be large (here 5 MiB, over the 4 MiB every other route allows)
    keys = create_keys("big-" + uuid.uuid4().hex[:6])
    status, _ = await signed(gateway, keys, "POST", "/v2/folders", json.dumps({"name": "big"}).encode())
    assert status == 201
    ctype, body = multipart([("five.bin", b"5" * (5 * 2**20))])
    status, out = await signed(gateway, keys, "POST", "/v2/folders/big/upload", body, content_type=ctype)
    assert status == 201 and out == {"uploaded": 1}, out
    status, _ = await signed(gateway, keys, "DELETE", "/v2/folders/big")
    assert status == 204


async def test_slow_headers_and_too_many_connections(make_gateway) -> None:
    async with make_gateway("--Gateway.header_timeout=2", "--Gateway.max_connections_per_address=5") as gw:
        loop = asyncio.get_running_loop()
        host = urlsplit(gw.url).netloc
        # slowloris: a header line every half second; the connection is closed at the header deadline
        sock = await open_socket(gw.url)
        began = time.monotonic()
        await loop.sock_sendall(sock, f"GET /api HTTP/1.1\r\nHost: {host}\r\n".encode())
        closed = False
        for i in range(40):
            await asyncio.sleep(0.5)
            try:
                await loop.sock_sendall(sock, f"X-Slow-{i}: {i}\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            try:
                if sock.recv(1, socket.MSG_PEEK) == b"":  # the server closed it
                    closed = True
                    break
            except BlockingIOError:
                pass  # still open, nothing to read
            except ConnectionResetError:
                closed = True
                break
        sock.close()
        # before: Tornado waits an hour for the rest of a header
        assert closed and time.monotonic() - began < 6, f"a trickled header held its connection {time.monotonic() - began:.0f} s"

        # at most five connections from one address; a sixth is closed at once; one freed, one more fits
        held = []
        request = f"GET /api HTTP/1.1\r\nHost: {host}\r\nAuthorization: token {TOKEN}\r\n\r\n".encode()
        for _ in range(5):
            s = await open_socket(gw.url)
            await loop.sock_sendall(s, request)
            assert (await read_reply(s, 10)).startswith(b"HTTP/1.1 200")
            held.append(s)
        extra = await open_socket(gw.url)
        try:
            await loop.sock_sendall(extra, request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert await read_reply(extra, 5) == b"", "a sixth connection from one address was served"
        extra.close()
        held.pop().close()
        await asyncio.sleep(0.2)
        again = await open_socket(gw.url)
        await loop.sock_sendall(again, request)
        assert (await read_reply(again, 10)).startswith(b"HTTP/1.1 200")
        for s in [*held, again]:
            s.close()
        await asyncio.sleep(0.2)
        assert gw.app.http_server.open_connections == 0
