"""The page's live list: a websocket that pushes the caller's kernels and sessions when they
change, their figures every few seconds, and a session's log as it is written.

Changes are pushed, not looked for: the kernel store and the Skaha jobs tell the hub when
something comes, goes or changes state, and the hub sends each open page its view at most
every `PUSH_DELAY` seconds. Figures (memory, CPU) have to be sampled: one sampler, only while a
page is open, reads the containers the open pages show, a few at a time.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlsplit

from tornado import httpclient, httputil, websocket

from ...auth import Identity
from ...errors import GatewayError, NotFound
from ...jobs.records import RECORD_KIND
from ...replicas.forward import FORWARDED, gather_from_peers, locate
from ..base import CERTIFICATE, PAGE, TOKEN, GatewayMixin
from ..context import GatewayContext
from .overview import FigureBook, items_for

PUSH_DELAY = 0.1  # seconds changes are gathered before a push
SAMPLE_CONCURRENCY = 8  # containers read at once
LOG_TAIL = 500  # lines a followed log starts with
MAX_FOLLOWS = 32  # logs followed at once, gateway-wide (each holds a thread of the engine's long pool)
MAX_UNSENT = 4 * 2**20  # bytes a slow page may leave unread before its pushes wait


class LiveHub:
    """The open pages, and what tells them about changes."""

    def __init__(self, gw: GatewayContext, sample_seconds: float) -> None:
        self.gw = gw
        self.sample_seconds = sample_seconds
        self.pages: set[LiveSocket] = set()
        self.book = FigureBook()
        self.follows = 0
        self._push: asyncio.TimerHandle | None = None
        self._sampler: asyncio.Task[None] | None = None
        gw.kernel_manager.on_change(self.changed)
        gw.jobs.on_change(self.changed)

    def join(self, page: LiveSocket) -> None:
        self.pages.add(page)
        if self._sampler is None or self._sampler.done():
            self._sampler = asyncio.ensure_future(self._sample_while_watched())

    def leave(self, page: LiveSocket) -> None:
        self.pages.discard(page)
        if not self.pages and self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None

    def close(self) -> None:
        """The gateway stops: every page's socket closes, and no log is followed any more."""
        if self._sampler is not None:
            self._sampler.cancel()
        for page in list(self.pages):
            page.stop_following()
            page.close(1001, "the gateway is stopping")

    async def recheck_all(self) -> None:
        """Close the pages whose sign-in has ended."""
        await asyncio.gather(*(page.recheck() for page in list(self.pages)))

    def changed(self) -> None:
        """Something a page may show changed: push soon (several changes, one push)."""
        if not self.pages or self._push is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # told from outside the loop: the next sample carries it
            return
        self._push = loop.call_later(PUSH_DELAY, self._push_all)

    def _push_all(self) -> None:
        self._push = None
        for page in list(self.pages):
            page.push()

    async def _sample_while_watched(self) -> None:
        gw, gate = self.gw, asyncio.Semaphore(SAMPLE_CONCURRENCY)
        backend = gw.jobs.backend  # kernels' and sessions' containers alike

        async def sample(ident: str, container_id: str) -> None:
            async with gate:
                try:
                    use = await backend.usage(container_id, gw.jobs.host_cores())
                except GatewayError:
                    return
            self.book.add(ident, use.memory, use.cpu_ns)

        while self.pages:
            await self.recheck_all()
            watchers = [p.identity for p in self.pages]
            everyone = any(i.admin for i in watchers)
            users = {i.user for i in watchers}
            wanted = [(km.kernel_id, km.docker.container_id) for km in gw.kernel_manager.list()
                      if (everyone or km.owner in users) and km.docker is not None and km.docker.container_id]
            wanted += [(rec.id, rec.container_id) for rec in gw.jobs.list()
                       if (everyone or rec.owner in users) and rec.status == "Running" and rec.container_id]
            self.book.keep_only({ident for ident, _ in wanted})
            await asyncio.gather(*(sample(ident, cid) for ident, cid in wanted),
                                 *(self._from_peers(page) for page in list(self.pages)))
            self._push_all()
            await asyncio.sleep(self.sample_seconds)

    async def _from_peers(self, page: LiveSocket) -> None:
        """With replicas: what the other replicas serve of this page's view (their items route,
        with the page's own cookie: each replica authorizes it itself)."""
        gw = self.gw
        if not gw.replicas.enabled or FORWARDED in page.request.headers:  # a peer's follow: its own part only
            return
        creds = httputil.HTTPHeaders({k: v for k, v in page.request.headers.get_all()
                                      if k.lower() in ("cookie", "authorization")})
        request = httputil.HTTPServerRequest(method="GET", uri=f"{gw.base_url}ui/api/items", headers=creds,
                                             host=page.request.host)
        page.peer_items = await gather_from_peers(request, gw.replicas, pick=lambda body: body["items"])


class LiveSocket(GatewayMixin, websocket.WebSocketHandler):
    """GET /ui/api/live: {"type": "items", "items": [...]} on every change and sample; a session's
    log with {"follow": ID} ({"type": "log", "id", "data"} ... {"type": "log-end", "id"})."""

    auth_schemes = (PAGE, TOKEN, CERTIFICATE)
    identity: Identity

    async def get(self, *args: Any, **kwargs: Any) -> None:
        # A websocket has no preflight: a page of another site could open one with our cookie.
        # Only the gateway's own page may (the cookie is SameSite=Strict too).
        origin = self.request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc.lower() != self.request.host.lower() and not self.check_origin(origin):
            self.set_status(403)
            self.finish("cross-origin websocket refused")
            return
        try:
            identity = await self.authenticate()
        except GatewayError as e:
            self.set_status(e.status)
            self.finish(e.message)
            return
        assert identity is not None
        self.identity = identity
        await super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        """Another origin: only the one the operator allowed by name (never "*" for a cookie)."""
        allowed = self.gateway.allow_origin
        return allowed not in ("", "*") and origin == allowed

    @property
    def hub(self) -> LiveHub:
        return self.settings["page_hub"]

    unsent = 0  # bytes written that the page has not taken yet
    peer_items: list[dict[str, Any]] = []  # with replicas: the others' part of the view (each sample)

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.following: dict[str, asyncio.Task[None]] = {}
        self.streams: dict[str, Any] = {}  # session id -> its open streams.LogStream
        self.hub.join(self)
        self.push(series=True)

    def on_close(self) -> None:
        self.hub.leave(self)
        self.stop_following()

    def stop_following(self) -> None:
        """End every followed log now: its reading thread ends when its stream is closed."""
        for stream in list(self.streams.values()):
            stream.close()
        for task in self.following.values():
            task.cancel()

    async def recheck(self) -> None:
        """A page's sign-in still holds (a revoked key pair, a new gateway token end it): else the
        socket closes with 4001, and the page shows the sign-in form."""
        if self.auth_scheme != PAGE:
            return
        try:
            still = await self.identify(PAGE)
        except GatewayError:
            still = None
        if still != self.identity:
            self.close(4001, "Your sign-in has ended (the key pair was revoked): sign in again.")

    def push(self, series: bool = False) -> None:
        if self.unsent > MAX_UNSENT:
            return  # a page that reads nothing: the next push carries the news
        items = items_for(self.gateway, self.identity, self.hub.book, series=series)
        here = {item["id"] for item in items}
        items += [item for item in self.peer_items if item.get("id") not in here]
        self.send(type="items", series=series, items=items)

    def on_message(self, message: str | bytes) -> None:
        try:
            msg = json.loads(message)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        if isinstance(msg.get("follow"), str):
            self.follow(msg["follow"])
        elif isinstance(msg.get("unfollow"), str):
            task = self.following.pop(msg["unfollow"], None)
            if task is not None:
                task.cancel()

    def follow(self, session_id: str) -> None:
        if session_id in self.following:
            return
        self.following[session_id] = asyncio.ensure_future(self._follow(session_id))

    def send(self, **msg: Any) -> bool:
        """Write one message; False when the page has not taken MAX_UNSENT bytes yet (nothing sent)."""
        if self.ws_connection is None or self.ws_connection.is_closing() or self.unsent > MAX_UNSENT:
            return False
        data = json.dumps(msg)
        sent = self.write_message(data)
        if not sent.done():
            self.unsent += len(data)

            def taken(_: Any, size: int = len(data)) -> None:
                self.unsent -= size
            sent.add_done_callback(taken)
        return True

    async def _follow_elsewhere(self, session_id: str) -> bool:
        """With replicas: a session another replica serves is followed there, through its page
        socket with this page's own credentials (it authorizes them itself); False when no other
        replica serves it."""
        gw = self.gateway
        if not gw.replicas.enabled or FORWARDED in self.request.headers:
            return False
        store = gw.store

        def homes() -> Awaitable[set[str]]:
            return store.homes_of(RECORD_KIND, session_id, False)
        url = await locate(gw.replicas, homes, f"session {session_id}")
        if url is None:
            return False
        headers = {k: v for k, v in self.request.headers.get_all() if k.lower() in ("cookie", "authorization")}
        headers[FORWARDED] = gw.replicas.replica_id
        target = f"{urlsplit(url).scheme.replace('http', 'ws', 1)}://{urlsplit(url).netloc}{gw.base_url}ui/api/live"
        peer = await websocket.websocket_connect(httpclient.HTTPRequest(target, headers=headers))
        try:
            await peer.write_message(json.dumps({"follow": session_id}))
            while (raw := await peer.read_message()) is not None:
                msg = json.loads(raw)
                if msg.get("type") in ("log", "log-end") and msg.get("id") == session_id:
                    self.send(**msg)
                    if msg["type"] == "log-end":
                        return True
            self.send(type="log-end", id=session_id, reason="the replica serving the session went away")
        finally:
            peer.close()
        return True

    async def _follow(self, session_id: str) -> None:
        gw, hub = self.gateway, self.hub
        stream = None
        try:
            if gw.jobs.find(session_id) is None and await self._follow_elsewhere(session_id):
                return
            rec = gw.authorizer.check(self.identity, gw.jobs.find(session_id),
                                      lambda: NotFound(f"session {session_id!r} not found"))
            if rec.container_id is None:
                raise NotFound(f"session {session_id} has no container (yet)")
            if hub.follows >= MAX_FOLLOWS:
                raise GatewayError("too many logs are followed on this gateway now; try again later", status=503)
            hub.follows += 1
            try:
                stream = self.streams[session_id] = await gw.jobs.backend.follow_logs(rec.container_id, LOG_TAIL)
                while (chunk := await stream.next()) is not None:
                    if not self.send(type="log", id=session_id, data=chunk.decode(errors="replace")):
                        stream.dropped += len(chunk)
                        continue
                    if stream.dropped:
                        self.send(type="log", id=session_id, data=f"\n[{stream.dropped} bytes of log skipped]\n")
                        stream.dropped = 0
            finally:
                hub.follows -= 1
                self.streams.pop(session_id, None)
                if stream is not None:
                    stream.close()
            self.send(type="log-end", id=session_id, reason="the session's container ended")
        except GatewayError as e:
            self.send(type="log-end", id=session_id, reason=e.message)
        except (OSError, httpclient.HTTPClientError, websocket.WebSocketClosedError) as e:
            self.send(type="log-end", id=session_id, reason=f"the replica serving the session is not reachable: {e}")
        except asyncio.CancelledError:
            raise
        finally:
            with contextlib.suppress(KeyError):
                if self.following.get(session_id) is asyncio.current_task():
                    del self.following[session_id]
