"""The one authentication step: each handler class declares its schemes and their order; credentials
a browser sends by itself get the cross-site guard; a scheme may wait for the body. A real Tornado
server and the real Authenticator (the gateway token), no Docker."""
from __future__ import annotations

import json

import pytest
from tornado import httpclient, web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from kernel_gateway_ext.api.inflight import InFlight
from kernel_gateway_ext.api.base import BODY_FIRST, COOKIE, TOKEN, BaseHandler, StreamedBody
from kernel_gateway_ext.auth import Authenticator, Identity

GATEWAY_TOKEN = "pipeline-test-token"


class Gateway:
    allow_origin = ""
    max_upload_body = 2**20
    stopping = False
    in_flight = InFlight()

    class log:
        @staticmethod
        def warning(*a):
            pass

        error = warning

    def __init__(self) -> None:
        self.authenticator = Authenticator(auth_token=GATEWAY_TOKEN)


class WhoAmI:
    def get(self) -> None:
        self.write_json({"user": self.identity.user, "scheme": self.auth_scheme})

    post = get


class TokenOnly(WhoAmI, BaseHandler):
    auth_schemes = (TOKEN,)


class CookieThenToken(WhoAmI, BaseHandler):
    """A dialect's own scheme (read from a plain header here), declared before the token."""

    auth_schemes = (COOKIE, TOKEN)

    async def identify(self, scheme):
        if scheme == COOKIE:
            name = self.request.headers.get("X-Test-Cookie")
            return Identity(name) if name else None
        return await super().identify(scheme)


@web.stream_request_body
class BodyFirstScheme(StreamedBody, BaseHandler):
    """Credentials inside the body: the scheme waits, take_body() decides."""

    auth_schemes = ("in-body",)

    async def identify(self, scheme):
        return BODY_FIRST

    async def authenticate_with_body(self) -> None:
        self.identity = Identity(json.loads(self.request.body)["user"])

    async def post(self) -> None:
        assert getattr(self, "identity", None) is None  # nothing decided before the body
        await self.take_body(parse=False)
        self.write_json({"user": self.identity.user})


@pytest.fixture
async def base():
    app = web.Application([(r"/token", TokenOnly), (r"/cookie", CookieThenToken), (r"/body", BodyFirstScheme)],
                          gateway=Gateway())
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}"
    server.stop()


async def fetch(url, method="GET", body=None, **headers):
    return await httpclient.AsyncHTTPClient().fetch(url, method=method, body=body, headers=headers, raise_error=False)


async def test_a_class_accepts_only_the_schemes_it_declares(base):
    ok = await fetch(f"{base}/token", Authorization=f"token {GATEWAY_TOKEN}")
    assert ok.code == 200 and json.loads(ok.body) == {"user": "admin", "scheme": "token"}
    assert (await fetch(f"{base}/token", **{"X-Test-Cookie": "alice"})).code == 401
    assert (await fetch(f"{base}/token", Authorization="token wrong")).code == 401


async def test_schemes_are_tried_in_the_declared_order(base):
    r = await fetch(f"{base}/cookie", Authorization=f"token {GATEWAY_TOKEN}", **{"X-Test-Cookie": "alice"})
    assert json.loads(r.body) == {"user": "alice", "scheme": "cookie"}
    r = await fetch(f"{base}/cookie", Authorization=f"token {GATEWAY_TOKEN}")
    assert json.loads(r.body) == {"user": "admin", "scheme": "token"}


async def test_browser_sent_credentials_are_refused_cross_site(base):
    evil = {"X-Test-Cookie": "alice", "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert (await fetch(f"{base}/cookie", "POST", b"{}", **evil)).code == 403
    assert (await fetch(f"{base}/cookie", **evil)).code == 200  # reading is not a state change
    # A token is not sent by a browser on its own: no guard for it.
    r = await fetch(f"{base}/token", "POST", b"{}", Authorization=f"token {GATEWAY_TOKEN}",
                    Origin="https://evil.example")
    assert r.code == 200


async def test_a_scheme_may_wait_for_the_body(base):
    r = await fetch(f"{base}/body", "POST", json.dumps({"user": "carol"}).encode())
    assert r.code == 200 and json.loads(r.body) == {"user": "carol"}
