"""Serving a request whose kernel or session lives on another replica: find its home, then pass
the request there as it came (method, URI, headers with their credentials, body) and its answer
back as it goes (streamed: logs that follow, long polls). The home authenticates and authorizes it
as if the client had called it; a forwarded request is never forwarded again.

Websockets are passed frame by frame: the client's upgrade is accepted here once the home has
accepted ours, with the subprotocol the home chose."""
from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from tornado import httpclient, httputil, web, websocket

from ..errors import ReplicaUnavailable
from .membership import Replicas

FORWARDED = "X-KGE-Forwarded-By"  # the replica that forwarded a request (never forwarded again)
STOPPING = "X-KGE-Stopping"  # on a 503 of a replica that is stopping: the request was not served
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "content-length", "host"}
WS_HEADERS = {"authorization", "cookie", "origin", "user-agent", "x-xsrftoken", "date", "x-backendai-version",
              "x-backendai-date"}
ADOPTION_MARGIN = 10.0  # s a takeover may take once a dead replica's lease ran out (a loaded host)


def takeover_wait(replicas: Replicas) -> float:
    """How long a request for a dead replica's kernel waits for a live one to adopt it: its lease
    runs out (lease_seconds after its last renewal), a peer notices (at its next renewal, a third
    of that later), then adopts (milliseconds, but seconds on a loaded host); 20 s by default, well
    inside a client's own timeout (jupyter_server's GatewayClient waits 42 s)."""
    return 2 * replicas.lease_seconds + ADOPTION_MARGIN


async def locate(replicas: Replicas, homes: Callable[[], Awaitable[set[str]]], what: str,
                 unreachable: str = "") -> str | None:
    """The URL of the live replica `homes()` names for `what`, or None when this replica should
    serve it (its own, or nobody's). A home that died (or that `unreachable` names: its URL
    refused us) is waited out until a live replica has taken it over."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + takeover_wait(replicas)
    while True:
        elsewhere = await homes() - {replicas.replica_id}
        if not elsewhere:
            # Moved here by a takeover under way (records move first, then the kernels are
            # adopted): served once adopted, never answered "does not exist" in between.
            await replicas.settled()
            return None
        for home in sorted(elsewhere):
            url = await replicas.url_of(home)
            if url and url != unreachable:
                return url
        if loop.time() > deadline:
            raise ReplicaUnavailable(f"the replica serving {what} is gone and no other has taken it over yet; retry")
        await asyncio.sleep(0.25)


def _target(home_url: str, uri: str) -> str:
    parts = urlsplit(home_url)
    return f"{parts.scheme}://{parts.netloc}{uri}"


def _headers(request: httputil.HTTPServerRequest, me: str, keep: set[str] | None = None) -> dict[str, str]:
    out = {k: v for k, v in request.headers.get_all()
           if k.lower() not in HOP_BY_HOP and (keep is None or k.lower() in keep)}
    # Signatures (v2) cover the Host the client called: the home must see the same one.
    out["Host"] = request.host
    out[FORWARDED] = me
    out["X-Forwarded-For"] = request.remote_ip or ""
    return out


async def forward_http(handler: web.RequestHandler, home_url: str, me: str) -> None:
    """Pass `handler`'s request to the replica at `home_url` and stream its answer back. Raises
    HomeUnreachable, having sent nothing back, when the home did not take the request (refused
    or dropped the connection, or answered that it is stopping)."""
    request = handler.request
    status: tuple[int, str | None] | None = None
    headers: list[tuple[str, str]] = []
    state = {"started": False, "refused": False}

    def on_header(line: str) -> None:
        nonlocal status
        if line.startswith("HTTP/"):
            _, code, *reason = line.strip().split(" ", 2)
            status, headers[:] = (int(code), reason[0] if reason else None), []
        elif ":" in line:
            name, value = line.split(":", 1)
            headers.append((name.strip(), value.strip()))
        elif not line.strip() and status is not None and status[0] != 100:  # the end of the headers
            if status[0] == 503 and any(n.lower() == STOPPING.lower() for n, _ in headers):
                state["refused"] = True
                return
            handler.set_status(*status)
            handler.clear_header("Content-Type")
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP:
                    handler.set_header(name, value)
            state["started"] = True

    def on_chunk(chunk: bytes) -> None:
        if state["started"]:
            handler.write(chunk)
            handler.flush()

    req = httpclient.HTTPRequest(
        _target(home_url, request.uri or "/"), method=request.method or "GET",
        headers=_headers(request, me), body=request.body if request.body or request.method in ("POST", "PUT", "PATCH")
        else None, allow_nonstandard_methods=True, follow_redirects=False, decompress_response=False,
        header_callback=on_header, streaming_callback=on_chunk, connect_timeout=5, request_timeout=3600)
    try:
        await httpclient.AsyncHTTPClient().fetch(req, raise_error=False)
    except (OSError, httpclient.HTTPClientError) as e:  # refused, reset or closed: the home died just now
        if not state["started"]:
            raise HomeUnreachable(home_url) from e
        raise
    if state["refused"]:
        raise HomeUnreachable(home_url)
    if not handler._finished:
        handler.finish()


async def pass_on(handler: web.RequestHandler, replicas: Replicas, homes: Callable[[], Awaitable[set[str]]],
                  what: str) -> bool:
    """Forward `handler`'s request to the live replica `homes()` names; False when this replica
    should serve it. A home that refuses the connection (it died just now) is waited out until
    it is taken over, then the request goes to the new home (or is served here)."""
    unreachable = ""
    for _ in range(3):
        url = await locate(replicas, homes, what, unreachable)
        if url is None:
            return False
        try:
            await forward_http(handler, url, replicas.replica_id)
            return True
        except HomeUnreachable as e:
            unreachable = e.url
    raise ReplicaUnavailable(f"the replica serving {what} cannot be reached; retry")


class HomeUnreachable(Exception):
    """The home replica refused the connection before answering (the request can be sent again)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class WebSocketForwarding:
    """Put first in a websocket handler's bases (see `forwardable`): while `forward_to` is set,
    the handler passes frames to and from the home replica instead of doing its own work."""

    forward_to: str | None = None
    home_socket: websocket.WebSocketClientConnection | None = None
    request: httputil.HTTPServerRequest
    gateway: Any

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self.forward_to is None:
            await super().get(*args, **kwargs)  # type: ignore[misc]
            return
        wanted = [p.strip() for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        url = _target(self.forward_to, self.request.uri or "/").replace("http", "ws", 1)
        req = httpclient.HTTPRequest(url, headers=_headers(self.request, self.gateway.replicas.replica_id, WS_HEADERS),
                                     connect_timeout=5, request_timeout=60)
        try:
            self.home_socket = await websocket.websocket_connect(req, subprotocols=wanted or None,
                                                              max_message_size=64 * 2**20)
        except httpclient.HTTPClientError as e:
            raise web.HTTPError(e.code, "the kernel's replica refused the websocket") from None
        except OSError as e:
            raise ReplicaUnavailable(f"the kernel's replica is unreachable ({e}); retry") from e
        await websocket.WebSocketHandler.get(self, *args, **kwargs)  # type: ignore[arg-type]

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        if self.forward_to is None:
            return super().select_subprotocol(subprotocols)  # type: ignore[misc]
        return self.home_socket.selected_subprotocol if self.home_socket is not None else None

    async def open(self, *args: Any, **kwargs: Any) -> None:
        if self.forward_to is None:
            opened = super().open(*args, **kwargs)  # type: ignore[misc]
            if inspect.isawaitable(opened):
                await opened
            return
        asyncio.ensure_future(self._pump_home())

    async def _pump_home(self) -> None:
        upstream = self.home_socket
        while upstream is not None:
            msg = await upstream.read_message()
            if msg is None:
                self.close()  # type: ignore[attr-defined]
                return
            try:
                await self.write_message(msg, binary=isinstance(msg, bytes))  # type: ignore[attr-defined]
            except websocket.WebSocketClosedError:
                upstream.close()
                return

    async def on_message(self, message: str | bytes) -> None:
        if self.forward_to is None:
            handled = super().on_message(message)  # type: ignore[misc]
            if inspect.isawaitable(handled):
                await handled
        elif self.home_socket is not None:
            try:
                await self.home_socket.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                self.close()  # type: ignore[attr-defined]

    def on_close(self) -> None:
        if self.forward_to is None:
            super().on_close()  # type: ignore[misc]
        elif self.home_socket is not None:
            self.home_socket.close()
            self.home_socket = None


def forwardable(cls: type[Any]) -> type[Any]:
    """`cls` (a websocket handler) able to pass its socket to the kernel's home replica."""
    return type(cls.__name__, (WebSocketForwarding, cls), {"__doc__": cls.__doc__, "__module__": cls.__module__})


async def gather_from_peers(request: httputil.HTTPServerRequest, replicas: Replicas,
                            pick: Callable[[Any], Any] = lambda body: body) -> list[Any]:
    """This same request (a list: kernels, sessions) answered by every live peer for its own part,
    concatenated (`pick` finds the list in an answer). A peer that does not answer (it died just
    now), or records homed at a replica that is not a peer (dead, being taken over), are waited out
    until what they served has been taken over, then the live ones are asked again: nothing goes
    missing."""
    client = httpclient.AsyncHTTPClient()
    headers = _headers(request, replicas.replica_id)
    body = request.body if request.method in ("POST", "PUT", "PATCH") else None

    async def one(url: str) -> list[Any] | None:
        try:
            r = await client.fetch(_target(url, request.uri or "/"), method=request.method or "GET", headers=headers,
                                   body=body, connect_timeout=2, request_timeout=10, raise_error=False)
        except (OSError, httpclient.HTTPClientError):
            return None
        if r.code == 503 and STOPPING in r.headers:
            return None
        try:
            found = pick(json.loads(r.body)) if r.code == 200 else []
        except (ValueError, AttributeError, KeyError, TypeError):
            return []
        return found if isinstance(found, list) else []

    for attempt in range(2):
        # Before asking: records homed at a replica that is neither this one nor a peer (dead, no
        # longer a peer, its takeover not done) would be missed.
        unserved = await replicas.unserved(replicas.peers())
        peers = replicas.peers()
        parts = await asyncio.gather(*(one(u) for u in peers.values()))
        gone = [rid for rid, part in zip(peers, parts) if part is None]
        if not (gone or unserved) or attempt:
            return [item for part in parts if part for item in part]
        await replicas.taken_over(gone + unserved, takeover_wait(replicas))
    return []
