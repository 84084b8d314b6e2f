"""One error renderer: every exception becomes (status, message, kind) in BaseHandler.write_error
and the dialect chooses only the body's format. Run against a real Tornado server with handlers of
each dialect's kind, no Docker."""
from __future__ import annotations

import json

import pytest
from tornado import httpclient, web
from tornado.testing import bind_unused_port
from tornado.httpserver import HTTPServer

from kernel_gateway_ext.api.base import BaseHandler
from kernel_gateway_ext.api.inflight import InFlight
from kernel_gateway_ext.api.skaha.handlers import SkahaHandler
from kernel_gateway_ext.api.v2.base import V2Handler
from kernel_gateway_ext.errors import KernelNotFound, OverCapacity


class Log:
    def warning(self, *a):
        pass

    error = warning


class Raising:
    auth_required = False

    def get(self, what: str) -> None:
        if what == "missing":
            raise KernelNotFound("Kernel does not exist: k1")
        if what == "full":
            raise OverCapacity("the host's memory budget is spent")
        if what == "tornado":
            raise web.HTTPError(405, "no %s here", "verb")
        raise RuntimeError("secret internal detail /srv/state")


class JupyterRaising(Raising, BaseHandler):
    pass


class V2Raising(Raising, V2Handler):
    pass


class SkahaRaising(Raising, SkahaHandler):
    pass


@pytest.fixture
async def base():
    app = web.Application([(r"/j/(\w+)", JupyterRaising), (r"/v2/(\w+)", V2Raising), (r"/s/(\w+)", SkahaRaising)],
                          gateway=type("G", (), {"log": Log(), "stopping": False, "in_flight": InFlight()})())
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}"
    server.stop()


async def fetch(url):
    return await httpclient.AsyncHTTPClient().fetch(url, raise_error=False)


async def test_each_dialect_renders_the_same_error_in_its_own_format(base):
    r = await fetch(f"{base}/j/missing")
    assert r.code == 404 and r.headers["Content-Type"] == "application/json"
    assert json.loads(r.body)["message"] == "Kernel does not exist: k1"
    r = await fetch(f"{base}/v2/missing")
    assert r.code == 404 and r.headers["Content-Type"].startswith("application/problem+json")
    assert json.loads(r.body) == {"type": json.loads(r.body)["type"], "title": "Kernel does not exist: k1"}
    assert json.loads(r.body)["type"].endswith("kernel-not-found")
    r = await fetch(f"{base}/s/full")
    assert r.code == 429 and r.headers["Content-Type"].startswith("text/plain")
    assert r.body.decode() == "the host's memory budget is spent\n"


async def test_tornado_errors_and_bugs_go_through_the_same_renderer(base):
    r = await fetch(f"{base}/j/tornado")
    assert r.code == 405 and json.loads(r.body)["message"] == "no verb here"
    for prefix in ("j", "v2", "s"):
        r = await fetch(f"{base}/{prefix}/bug")
        assert r.code == 500
        assert b"secret" not in r.body and b"Traceback" not in r.body  # never internals in a body
