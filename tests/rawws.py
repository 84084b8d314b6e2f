"""A websocket client that reads nothing: a raw socket after the handshake, with a small receive
buffer, to play a stalled browser tab or a slow link (every real client library keeps reading
into memory by itself)."""
from __future__ import annotations

import asyncio
import base64
import os
import socket
from urllib.parse import urlsplit


async def connect(url: str, headers: dict[str, str]) -> socket.socket:
    """Open the websocket at `url` (http://…); returns the socket after the 101."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket", "Connection: Upgrade",
            "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode()]
    head += [f"{k}: {v}" for k, v in headers.items()]
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, ("\r\n".join(head) + "\r\n\r\n").encode())
    reply = await asyncio.wait_for(loop.sock_recv(sock, 4096), 20)
    if not reply.startswith(b"HTTP/1.1 101"):
        sock.close()
        raise ConnectionError(reply[:300].decode(errors="replace"))
    return sock


async def send_text(sock: socket.socket, text: str) -> None:
    """One masked text frame (clients must mask)."""
    payload = text.encode()
    mask = os.urandom(4)
    if len(payload) < 126:
        head = bytes([0x81, 0x80 | len(payload)])
    elif len(payload) < 65536:
        head = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + len(payload).to_bytes(8, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    await asyncio.get_running_loop().sock_sendall(sock, head + mask + body)


def rss_mb() -> float:
    """This process's resident memory (an in-process gateway's growth shows here)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
