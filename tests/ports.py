"""A free local port, for gateways the tests and the benches start (no pytest here: the benches
run in the gateway's own venv, which has none)."""
from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
