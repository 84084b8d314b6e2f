"""Routes of the gateway itself, beside the dialects: Prometheus metrics and the API descriptions."""
from __future__ import annotations

from typing import Any

from ..errors import Forbidden
from . import openapi
from .base import BaseHandler


class MetricsHandler(BaseHandler):
    """GET /metrics: Prometheus text format, for the gateway token (or an admin key pair): it
    shows every user's kernels and sessions."""

    def get(self) -> None:
        if not self.identity.admin:
            raise Forbidden("metrics are for the gateway's operators (the gateway token or an admin key pair)")
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.gateway.metrics.render())


def default_handlers(b: str) -> list[tuple[str, type[Any]]]:
    return [
        (rf"{b}metrics", MetricsHandler),
        (rf"{b}openapi/(?P<dialect>jupyter|v2|skaha|page)\.json", openapi.OpenAPIHandler),
    ]
