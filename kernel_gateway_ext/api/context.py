"""What handlers may use of the gateway: a narrow, typed view of its parts.

The application object (`app.Gateway`) satisfies it and is handed to Tornado as the `gateway` setting;
handlers import this Protocol, never the application, so `api/` does not import `app` back.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

from ..auth import Authenticator, Authorizer
from ..auth.hmac_v2 import SeenSignatures
from ..auth.keypairs import KeyPairs
from ..folders import FolderManager
from ..kernels.jupyter_sessions import JupyterSessions
from ..kernels.manager import GatewayKernelManager
from ..kernels.specs import GatewayKernelSpecManager
from ..metrics import Metrics
from .inflight import InFlight
from ..jobs import JobManager
from ..replicas import Replicas
from ..store import Store


class GatewayContext(Protocol):
    # the parts (set once, by the composition root, before any handler runs)
    kernel_manager: GatewayKernelManager
    kernel_spec_manager: GatewayKernelSpecManager
    folders: FolderManager
    jobs: JobManager
    keypairs: KeyPairs
    authenticator: Authenticator
    authorizer: Authorizer
    jupyter_sessions: JupyterSessions
    replicas: Replicas
    store: Store
    metrics: Metrics
    in_flight: InFlight  # the HTTP requests being served (a stop lets them finish)
    bridges: Any  # api.jupyter.bridge.Bridges (the Jupyter dialect's own registry)
    terminals: dict[str, set[Any]]
    signatures_seen: SeenSignatures
    log: logging.Logger | logging.LoggerAdapter[Any]
    # settings handlers read
    base_url: str
    allow_origin: str
    max_upload_body: int
    max_terminals: int
    ws_max_unsent_bytes: int
    docker_available: bool
    stopping: bool  # a stop is under way: requests are refused (503), so clients and balancers retry

    def status_model(self) -> dict[str, Any]: ...
