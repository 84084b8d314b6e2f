"""The Skaha dialect's routes (v0: skaha 1.7, v1: canfar 1.5) and the notebook proxy."""
from __future__ import annotations

from typing import Any

from ...replicas.forward import forwardable

from . import handlers as sk, proxy


def default_handlers(b: str) -> list[tuple[str, type[Any]]]:
    return [
        (rf"{b}skaha/(?P<what>availability|capabilities)", sk.VosiHandler),
        (rf"{b}skaha/{sk.VERSION}/session/?", sk.SessionsHandler),
        (rf"{b}skaha/{sk.VERSION}/session/{sk.SESSION_ID}/?", sk.SessionHandler),
        (rf"{b}skaha/{sk.VERSION}/image/?", sk.ImagesHandler),
        (rf"{b}skaha/{sk.VERSION}/context/?", sk.ContextHandler),
        (rf"{b}skaha/session/{sk.SESSION_ID}/{proxy.WS_PATHS}", forwardable(proxy.NotebookWebSocketProxy)),
        (rf"{b}skaha/session/{sk.SESSION_ID}/(?P<path>.*)", proxy.NotebookProxyHandler),
    ]
