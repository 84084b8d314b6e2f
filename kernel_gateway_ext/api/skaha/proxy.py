"""/skaha/session/ID/…: the owner's way into a notebook session's Jupyter server.

The caller authenticates as the session's owner (token, Bearer, or the cookie a `?token=` visit
sets); the gateway forwards HTTP and websockets to the container with the server's own token,
which never leaves the gateway.

The session's pages run on the gateway's origin, so the cookie is made to be worth little there:
it opens this one session only (its path and its value), it is re-checked against the key pair on
every request (revocation ends it), and the `?token=` visit is redirected away so the page's
scripts never see the token.
"""
from __future__ import annotations

import asyncio
import time

from urllib.parse import urlencode

from tornado import httpclient, web, websocket
from tornado.httputil import HTTPHeaders

from ...auth import Identity
from ...errors import GatewayError, NotFound
from ..base import CERTIFICATE, PAGE, TOKEN, BodyFirst, StreamedBody
from ..base import COOKIE as COOKIE_SCHEME
from .handlers import SkahaHandler

COOKIE = "kge_user"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length", "content-encoding", "set-cookie", "server", "date"}
WS_PATHS = r"(?P<path>api/kernels/[^/]+/channels|api/events/subscribe|terminals/websocket/[^/]+)"


class ProxyMixin(SkahaHandler):
    record_kind = "skaha-session"
    redirect_token_visit = True
    # The token, then what a browser sends by itself: the session's cookie, a client certificate,
    # the web page's cookie (its owner's only: an operator's page cookie never opens another
    # user's pages, whose scripts run on the gateway's origin).
    auth_schemes = (TOKEN, COOKIE_SCHEME, CERTIFICATE, PAGE)

    async def identify(self, scheme: str) -> Identity | BodyFirst | None:
        if scheme == COOKIE_SCHEME:
            return await self._cookie_identity(self.path_kwargs["session_id"])
        identity = await super().identify(scheme)
        if scheme == PAGE and isinstance(identity, Identity):
            rec = self.jobs.find(self.path_kwargs["session_id"])
            return identity if rec is not None and rec.owner == identity.user else None
        return identity

    async def prepare(self) -> None:
        await super().prepare()  # the one authentication step
        if self.passed_on:
            return
        session_id = self.path_kwargs["session_id"]
        identity = self.identity
        if (self.auth_scheme == TOKEN and self.get_query_argument("token", None)) or self.auth_scheme == PAGE:
            # A browser that came with ?token= (or from the web page) keeps its identity in a signed
            # cookie for this session.
            self.set_signed_cookie(COOKIE, self._cookie_value(session_id, identity), httponly=True, samesite="Strict",
                                   secure=self.request.protocol == "https", path=self._session_path(session_id))
            if self.redirect_token_visit and self.request.method == "GET" and self.auth_scheme == TOKEN:
                self.redirect(self.upstream_uri())

    def _session_path(self, session_id: str) -> str:
        return f"{self.gateway.base_url}skaha/session/{session_id}/"

    def _cookie_value(self, session_id: str, identity: Identity) -> str:
        binding = self.gateway.authenticator.binding_of(identity)
        return "|".join((session_id, binding, identity.user, str(int(identity.admin))))

    async def _cookie_identity(self, session_id: str) -> Identity | None:
        raw = self.get_signed_cookie(COOKIE, max_age_days=1)
        if not raw:
            return None
        sid, binding, user, admin = (raw.decode(errors="replace").split("|") + ["", "", "", ""])[:4]
        if sid != session_id or not binding:
            return None  # a cookie opens the one session it was made for
        return await self.gateway.authenticator.identify_binding(binding, user, admin == "1")  # None once revoked

    def target(self, session_id: str) -> tuple[str, str]:
        """(upstream base like host:8888, the server's token) for the caller's notebook session."""
        rec = self.job(session_id, "execute")
        if rec.type != "notebook":
            raise NotFound(f"session {session_id!r} has no notebook server")
        if rec.status != "Running" or not rec.ip:
            raise GatewayError(f"session {session_id} is {rec.status}", status=503)
        return f"{rec.ip}:8888", self.jobs.notebook_token(session_id)

    def upstream_uri(self) -> str:
        args = [(k, v.decode()) for k, vs in self.request.query_arguments.items() if k != "token" for v in vs]
        return self.request.path + (("?" + urlencode(args)) if args else "")

    def upstream_headers(self, token: str) -> HTTPHeaders:
        headers = HTTPHeaders()
        for name, value in self.request.headers.get_all():
            if name.lower() not in HOP_BY_HOP | {"authorization", "cookie", "host", "x-skaha-authentication-type",
                                                 "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                                                 "sec-websocket-protocol"}:
                headers.add(name, value)
        headers["Authorization"] = f"token {token}"
        return headers


@web.stream_request_body
class NotebookProxyHandler(StreamedBody, ProxyMixin):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    async def proxy(self, session_id: str, path: str = "") -> None:
        await self.take_body(parse=False)  # forwarded as it came
        host, token = self.target(session_id)
        body = self.request.body if self.request.method not in ("GET", "HEAD", "OPTIONS") else None
        req = httpclient.HTTPRequest(
            f"http://{host}{self.upstream_uri()}", method=self.request.method, headers=self.upstream_headers(token),
            body=body, follow_redirects=False, request_timeout=300, allow_nonstandard_methods=True, decompress_response=False,
        )
        began = time.monotonic()
        while True:
            try:
                resp = await self._client(session_id).fetch(req, raise_error=False)
                break
            except OSError as e:
                # Refused: the server in the container is still starting (a session is Running as soon
                # as its container is, JupyterLab listens a few seconds later). The click on the
                # connectURL waits for it rather than showing an error page.
                if time.monotonic() - began > STARTING_WAIT:
                    raise GatewayError("the notebook server is not answering yet", status=503) from e
                await asyncio.sleep(0.25)
                self.target(session_id)  # still there and running, or its own error
        if resp.code == 599:
            raise GatewayError("the notebook server is not answering yet", status=503)
        self.set_status(resp.code, resp.reason)
        self._headers = HTTPHeaders()
        for name, value in resp.headers.get_all():
            if name.lower() not in HOP_BY_HOP:
                self.add_header(name, value)
        if resp.code in (204, 304):
            self.finish()
        else:
            self.finish(resp.body or b"")

    get = head = post = put = patch = delete = options = proxy

    def _client(self, session_id: str) -> httpclient.AsyncHTTPClient:
        """Each session has its own connection slots: a server that hangs (or long-polls) holds up
        only its own owner, never everyone's proxy (one shared client has 10 slots in all)."""
        client = _CLIENTS.get(session_id)
        if client is None:
            live = {r.id for r in self.jobs.list()}
            for gone in [sid for sid in _CLIENTS if sid not in live]:
                _CLIENTS.pop(gone).close()
            client = _CLIENTS[session_id] = httpclient.AsyncHTTPClient(force_instance=True, max_clients=SLOTS_PER_SESSION)
        return client


SLOTS_PER_SESSION = 16
STARTING_WAIT = 30.0  # seconds a request waits for a session's notebook server to start listening
_CLIENTS: dict[str, httpclient.AsyncHTTPClient] = {}  # session id -> its client; pruned as sessions go


class NotebookWebSocketProxy(ProxyMixin, websocket.WebSocketHandler):
    upstream: websocket.WebSocketClientConnection | None = None
    redirect_token_visit = False

    def set_default_headers(self) -> None:
        pass

    def check_origin(self, origin: str) -> bool:
        # The cookie rides along from any page: only the gateway's own pages (the session's
        # JupyterLab) may open a websocket with it (Tornado's same-host rule, or allow_origin).
        allowed = self.gateway.allow_origin
        return (allowed not in ("", "*") and origin == allowed) or super().check_origin(origin)

    async def get(self, session_id: str, path: str) -> None:
        host, token = self.target(session_id)
        wanted = [p.strip() for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        req = httpclient.HTTPRequest(f"ws://{host}{self.upstream_uri()}", headers=self.upstream_headers(token),
                                     request_timeout=60)
        try:
            self.upstream = await websocket.websocket_connect(req, subprotocols=wanted or None,
                                                              max_message_size=64 * 2**20)
        except (httpclient.HTTPClientError, OSError) as e:
            raise GatewayError(f"the notebook server refused the websocket: {e}", status=502) from e
        await super().get(session_id, path)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return self.upstream.selected_subprotocol if self.upstream is not None else None

    def open(self, session_id: str, path: str) -> None:
        self.set_nodelay(True)
        asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        upstream = self.upstream  # on_close clears the attribute while a read may be waiting
        assert upstream is not None
        while True:
            msg = await upstream.read_message()
            if msg is None:
                self.close()
                return
            try:
                await self.write_message(msg, binary=isinstance(msg, bytes))
            except websocket.WebSocketClosedError:
                return

    async def on_message(self, message: str | bytes) -> None:
        if self.upstream is not None:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

