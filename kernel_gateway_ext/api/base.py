"""What every handler shares: the request pipeline (authenticate with the schemes its class declares,
authorize through the authorizer, JSON in and out) and the one place errors become HTTP."""
from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tornado import httputil, iostream, web, websocket

from ..auth import Identity, extract_token
from ..auth.page import CSRF_HEADER, PAGE_COOKIE
from ..auth.authorizer import Owned
from ..errors import BadRequest, Forbidden, GatewayError, KernelNotFound, ReplicaUnavailable, Unauthorized
from ..kernels.kernel import GatewayKernel
from ..replicas.forward import FORWARDED, STOPPING, gather_from_peers, locate, pass_on
from .context import GatewayContext

T = TypeVar("T", bound=Owned)

# The schemes a handler class may declare in `auth_schemes`, tried in the order it gives them.
TOKEN = "token"  # the gateway token or a key pair's ACCESS:SECRET (Authorization: token|Bearer, ?token=)
CERTIFICATE = "certificate"  # a verified X.509 client certificate
COOKIE = "cookie"  # a signed cookie (the notebook proxy's)
PAGE = "page"  # the web page's sign-in cookie (auth/page.py); changes also need its CSRF header
SIGNATURE = "signature"  # a Backend.AI HMAC signature (v2), which may cover a body still to come
BROWSER_SENT = {CERTIFICATE, COOKIE, PAGE}  # a browser sends these to any site's form: cross-site guarded
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class BodyFirst:
    """A scheme's answer that it can only tell once the body is here (take_body() asks again)."""


BODY_FIRST = BodyFirst()


class GatewayMixin:
    """Access to the gateway's parts from any handler (HTTP or websocket)."""

    settings: dict[str, Any]
    request: Any
    identity: Identity
    path_kwargs: dict[str, str]

    @property
    def gateway(self) -> GatewayContext:
        return self.settings["gateway"]

    # ---- authorization: the authorizer decides, these only ask it for this caller --------------
    def authorized(self, thing: T | None, missing: Callable[[], GatewayError], action: str = "read") -> T:
        """`thing` if the caller may do `action` to it, else `missing()` is raised (a 404: never a 403)."""
        return self.gateway.authorizer.check(self.identity, thing, missing, action)

    def visible(self, things: Iterable[T]) -> list[T]:
        return self.gateway.authorizer.visible(self.identity, things)

    def owner_scope(self) -> str | None:
        """The owner a lookup by name is limited to (None: an operator's, anyone's)."""
        return self.gateway.authorizer.scope(self.identity)

    def owned_kernel(self, ident: str, *, by_token: bool = False, action: str = "read") -> GatewayKernel:
        """The kernel with id `ident` (or, `by_token`, the caller's kernel with that v2 client token:
        tokens are only unique per owner) if the caller may do `action` to it; else a 404."""
        mgr, authorizer = self.gateway.kernel_manager, self.gateway.authorizer
        by_id = mgr.find(ident)
        candidates = ([by_id] if by_id is not None else []) + (mgr.with_token(ident) if by_token else [])
        found = next((km for km in candidates if authorizer.is_authorized(self.identity, action, km.owner)), None)
        if found is None:
            raise KernelNotFound(f"Kernel does not exist: {ident}")
        return found

    # ---- replicas: a kernel or session served by its home replica ------------------------------
    record_kind: str | None = None  # the store's record kind of what this route names by id
    by_token = False  # the id may be a v2 client token

    def is_here(self, ident: str) -> bool:
        gw = self.gateway
        if self.record_kind == "kernel":
            return gw.kernel_manager.find(ident) is not None or bool(self.by_token and gw.kernel_manager.with_token(ident))
        if self.record_kind == "skaha-session":
            return gw.jobs.find(ident) is not None
        return gw.jupyter_sessions.get(ident) is not None

    def named(self) -> str | None:
        """With replicas: the id of the kernel or session this route names, when it is not served here."""
        if self.record_kind is None or not self.gateway.replicas.enabled:
            return None
        ident = self.path_kwargs.get("kernel_id") or self.path_kwargs.get("session_id")
        return ident if ident and not self.is_here(ident) else None

    async def from_peers(self, pick: Callable[[Any], Any] = lambda body: body) -> list[Any]:
        """For a list: the other live replicas' parts of it (nothing with one gateway); `pick`
        finds the list in an answer."""
        replicas = self.gateway.replicas
        if not replicas.enabled:
            return []
        await replicas.settled()  # this replica's own part: what a takeover here moved is adopted first
        if FORWARDED in self.request.headers:
            return []
        return await gather_from_peers(self.request, replicas, pick)

    def peer_certificate(self) -> dict[str, Any] | None:
        """The client certificate the TLS layer verified against the client CA, if any.
        (Tornado's get_ssl_certificate raises on a plain-HTTP connection.)"""
        stream = getattr(self.request.connection, "stream", None)
        if not isinstance(stream, iostream.SSLIOStream):
            return None
        return self.request.get_ssl_certificate()

    # ---- authentication: the one step, over the schemes the handler's class declares -----------
    auth_schemes: tuple[str, ...] = (TOKEN, CERTIFICATE)
    auth_scheme = ""  # the scheme that named the caller

    def schemes(self) -> tuple[str, ...]:
        """The schemes this request may use, in order (a dialect may choose by the request)."""
        return self.auth_schemes

    async def authenticate(self) -> Identity | None:
        """The first of the schemes that names a caller; None when one must see the body first.
        Unauthorized when none does."""
        for scheme in self.schemes():
            identity = await self.identify(scheme)
            if isinstance(identity, BodyFirst):
                return None
            if identity is not None:
                if scheme in BROWSER_SENT:
                    self.refuse_cross_site()
                if scheme == PAGE:
                    self.check_csrf()
                self.auth_scheme = scheme
                return identity
        raise Unauthorized("authentication required")

    async def identify(self, scheme: str) -> Identity | BodyFirst | None:
        """Who the request's credentials of `scheme` name (None: none of that scheme, or not valid).
        The shared schemes are here; a dialect that declares another reads it in its override."""
        authenticator = self.gateway.authenticator
        if scheme == TOKEN:
            return await authenticator.identify(extract_token(self.request))
        if scheme == CERTIFICATE:
            return authenticator.identify_certificate(self.peer_certificate())
        if scheme == PAGE:
            value = self.page_cookie()
            if not value:
                return None
            return await authenticator.page.identify(value, authenticator.identify_certificate(self.peer_certificate()))
        raise NotImplementedError(f"{type(self).__name__} declares the {scheme!r} scheme but does not read it")

    def page_cookie(self) -> str | None:
        """The web page's sign-in cookie, if it is one we signed and not too old."""
        raw = self.get_signed_cookie(PAGE_COOKIE, max_age_days=self.gateway.authenticator.page_session_hours / 24)  # type: ignore[attr-defined]  # a RequestHandler's
        return raw.decode(errors="replace") if raw else None

    def check_csrf(self) -> None:
        """A change made with the page's cookie must carry the cookie's CSRF token, which only the
        gateway's own page can read."""
        if self.request.method in SAFE_METHODS:
            return
        value, sent = self.page_cookie() or "", self.request.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(sent, self.gateway.authenticator.page.csrf(value)):
            raise Forbidden(f"a change made from the page needs its {CSRF_HEADER} header; reload the page")

    def refuse_cross_site(self) -> None:
        """CSRF guard for credentials a browser sends by itself (client certificates, cookies): a
        state-changing request must come from our own origin. A cross-site form cannot hide its
        Origin (or Sec-Fetch-Site); command-line clients send neither and pass."""
        if self.request.method in SAFE_METHODS:
            return
        origin = self.request.headers.get("Origin")
        site = self.request.headers.get("Sec-Fetch-Site", "")
        allowed = self.gateway.allow_origin
        trusted = origin is None or (allowed not in ("", "*") and origin == allowed) or (
            urlsplit(origin).netloc.lower() == self.request.host.lower())
        if site == "cross-site" or not trusted:
            raise Forbidden("cross-site request refused: a browser's certificate or cookie only counts on "
                            "requests from this gateway's own pages")


class BaseHandler(GatewayMixin, web.RequestHandler):
    """JSON handler; subclasses set `auth_required` and implement verbs."""

    auth_required = True
    # The web page's cookie too: the page acts through the dialects' own routes (websockets do not
    # take it: a cross-site websocket has no preflight to stop it).
    auth_schemes: tuple[str, ...] = (TOKEN, CERTIFICATE, PAGE)
    identity: Identity

    passed_on = False  # served by another replica (an override of prepare stops there)
    _counted = False  # in gateway.in_flight until it finishes or its client leaves

    async def prepare(self) -> None:
        if self.gateway.stopping:  # its kernels are being handed over or shut down: elsewhere, or later
            raise ReplicaUnavailable("this gateway is stopping; retry")
        if not isinstance(self, websocket.WebSocketHandler):  # a socket lasts: a stop closes those
            self._counted = True
            self.gateway.in_flight.begin()
        if await self.served_elsewhere():
            return
        if self.auth_required:
            identity = await self.authenticate()
            if identity is not None:  # else a scheme waits for the body: take_body() finishes it
                self.identity = identity

    async def served_elsewhere(self) -> bool:
        """With replicas: pass this request to the replica serving what it names, if not this one."""
        ident = self.named()
        if ident is None:
            return False
        replicas, what = self.gateway.replicas, self.request.path
        await replicas.settled()  # what a takeover here moved over is served once it is adopted
        if FORWARDED in self.request.headers or self.is_here(ident):
            return False  # a forwarded request is served here (never forwarded again)
        kind, store, by_token = self.record_kind or "", self.gateway.store, self.by_token

        def homes() -> Awaitable[set[str]]:
            return store.homes_of(kind, ident, by_token)
        if isinstance(self, websocket.WebSocketHandler):
            url = await locate(replicas, homes, what)
            self.forward_to = url  # WebSocketForwarding passes the socket on
        elif getattr(self, "streams_body", False):
            url = await locate(replicas, homes, what)
            if url is not None:
                # The body is still to come: the verb, once it is here, forwards it all (within
                # the server's small body limit: this replica does not know the caller yet).
                setattr(self, self.request.method.lower(), functools.partial(self._pass_on_with_body, homes))
        else:
            url = "passed" if await pass_on(self, replicas, homes, what) else None
        self.passed_on = url is not None
        return self.passed_on

    async def _pass_on_with_body(self, homes: Callable[[], Awaitable[set[str]]], *args: Any, **kwargs: Any) -> None:
        self.request.body = bytes(getattr(self, "_chunks", b""))
        if not await pass_on(self, self.gateway.replicas, homes, self.request.path):
            raise ReplicaUnavailable("the replica serving this request changed while its body came; retry")

    async def authenticate_with_body(self) -> None:
        """The scheme that waited for the body (v2 signatures) decides, now that it is here."""
        raise Unauthorized("authentication required")

    def on_finish(self) -> None:
        self._uncount()

    def on_connection_close(self) -> None:
        self._uncount()
        super().on_connection_close()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.gateway.in_flight.end()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object; empty body -> {}."""
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # deep nesting: RecursionError
            raise BadRequest("request body is not valid JSON") from e
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(obj))

    # ---- errors: the only place where an exception becomes a response -------------------------
    def error_response(self, status: int, message: str, kind: str) -> tuple[str, bytes]:
        """The dialect's error format, as (content type, body). Jupyter's: {"message", "reason"}."""
        return "application/json", json.dumps({"message": message, "reason": self._reason}).encode()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, GatewayError):
            status_code, message, kind = exc.status, exc.message, exc.kind
            self.set_status(status_code)
        elif isinstance(exc, web.HTTPError):
            template = exc.log_message or ""
            message = (template % exc.args if exc.args else template) or self._reason
            kind = "http-error"
        else:
            message, kind = "internal server error", "internal-error"
        if self.gateway.stopping:  # a forwarding replica sends the request elsewhere
            self.set_header(STOPPING, "1")
        content_type, body = self.error_response(status_code, message, kind)
        self.set_header("Content-Type", content_type)
        self.finish(body)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Expected errors get one line; only real bugs get a traceback (in the log, never the body).
        if isinstance(value, GatewayError):
            level = self.log_warning if value.status < 500 else self.log_error
            level("%s %s -> %s %s", self.request.method, self.request.path, value.status, value.message)
        else:
            super().log_exception(typ, value, tb)

    def log_warning(self, fmt: str, *args: Any) -> None:
        self.gateway.log.warning(fmt, *args)

    def log_error(self, fmt: str, *args: Any) -> None:
        self.gateway.log.error(fmt, *args)


class StreamedBody:
    """For the routes that take uploads: the body is read only after `prepare` authenticated the
    caller, and only these requests may be as large as `max_upload_body`; every other route keeps
    the server's small limit. (A v2 signature that covers the body is checked once the body is
    here: such a body keeps the small limit.) A verb awaits `take_body()` before reading it."""

    request: httputil.HTTPServerRequest
    gateway: Any
    streams_body = True

    async def prepare(self) -> None:
        await super().prepare()  # type: ignore[misc]
        self._chunks = bytearray()
        if getattr(self, "identity", None) is not None:
            self.request.connection.set_max_body_size(self.gateway.max_upload_body)  # type: ignore[union-attr]

    def data_received(self, chunk: bytes) -> None:
        self._chunks += chunk

    async def take_body(self, parse: bool = True) -> None:
        """Make the received body `request.body` (and, parsed, its form fields and files)."""
        self.request.body = bytes(self._chunks)
        self._chunks = bytearray()
        if getattr(self, "identity", None) is None:
            await self.authenticate_with_body()  # type: ignore[attr-defined]
        if not parse:
            return
        try:
            httputil.parse_body_arguments(self.request.headers.get("Content-Type", ""), self.request.body,
                                          self.request.body_arguments, self.request.files, self.request.headers)
        except httputil.HTTPInputError as e:
            raise BadRequest(f"invalid body: {e}") from e
        for name, values in self.request.body_arguments.items():
            self.request.arguments.setdefault(name, []).extend(values)


class NotFoundHandler(BaseHandler):
    """Any unrouted path: a JSON 404 (after auth, so paths are not probed anonymously)."""

    auth_required = False

    async def prepare(self) -> None:
        raise web.HTTPError(404, "no such endpoint")
