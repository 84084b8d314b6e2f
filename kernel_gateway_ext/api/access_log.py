"""The access log and the request-latency histogram, written once per finished request.

A line names the caller (user and key pair, never a token or secret) and the remote address, as
jupyter_server's does: ``200 GET /api/kernels (alice@10.0.0.7) 3.1ms``. Query strings are left out:
``?token=`` must never reach a log. The histogram is labelled by route template (``/api/kernels/{kernel_id}``),
never by raw path, so its size is bounded by the route table.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Sequence

from tornado import web

from ..metrics import Metrics

_GROUP = re.compile(r"\(\?P<(\w+)>")


def route_template(pattern: str, base_url: str) -> str:
    """``/api/kernels/(?P<kernel_id>…)/?`` → ``/api/kernels/{kernel_id}``."""
    out, i = [], 0
    while i < len(pattern):
        m = _GROUP.match(pattern, i)
        if m:  # skip the group, nested parentheses and all
            depth, j = 1, m.end()
            while j < len(pattern) and depth:
                depth += {"(": 1, ")": -1}.get(pattern[j], 0) if pattern[j - 1] != "\\" else 0
                j += 1
            out.append("{" + m.group(1) + "}")
            i = j
            continue
        out.append(pattern[i])
        i += 1
    text = "".join(out).replace("\\.", ".").replace("(?:create)?", "").replace("/?", "").rstrip("$")
    return "/" + text[len(base_url):] if text.startswith(base_url) else text


class AccessLog:
    """Tornado's ``log_function``."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter[Any], metrics: Metrics,
                 routes: Sequence[tuple[Any, ...]], base_url: str) -> None:
        self.log = log
        self.metrics = metrics
        self.templates: dict[type, str] = {}
        for pattern, handler, *_ in routes:
            self.templates.setdefault(handler, route_template(pattern, base_url))

    def __call__(self, handler: web.RequestHandler) -> None:
        request = handler.request
        status = handler.get_status()
        seconds = request.request_time()
        route = self.templates.get(type(handler), "unmatched")
        self.metrics.request_seconds.labels(request.method or "", route, str(status)).observe(seconds)
        level = logging.INFO if status < 400 else logging.WARNING
        if route == "/api/kernels" and request.method == "GET" and status < 400:
            level = logging.DEBUG  # JupyterLab polls this every few seconds
        identity = getattr(handler, "identity", None)
        user = identity.user if identity is not None else "-"
        self.log.log(
            level, "%d %s %s (%s@%s) %.1fms", status, request.method, request.path, user, request.remote_ip,
            1000.0 * seconds,
            extra={"status": status, "method": request.method, "path": request.path, "route": route, "user": user,
                   "access_key": getattr(identity, "access_key", None), "remote_ip": request.remote_ip,
                   "duration_ms": round(1000.0 * seconds, 2)},
        )


