"""A Skaha job's record (a "session" on the wire): what was asked, its container, status and events."""
from __future__ import annotations

import re
import string
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

RECORD_KIND = "skaha-session"  # the store's record kind
LABEL_SESSION_ID = "org.kge.session.id"
LABEL_SESSION_TYPES = "org.kge.session-types"
KINDS = ("headless", "notebook", "desktop", "carta", "firefly", "contributed", "desktop-app")
STATUS_ALIASES = {"completed": "Succeeded", "succeeded": "Succeeded", "failed": "Error", "error": "Error",
                  "pending": "Pending", "running": "Running", "terminating": "Terminating"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ID_ALPHABET = string.ascii_lowercase + string.digits
NOTEBOOK_PORT = 8888
# JupyterLab 4 from the notebook image's own venv (docker/notebook); it asks nothing of the internet.
NOTEBOOK_CMD = ["/opt/jupyter/bin/python", "-m", "jupyterlab", "--config=/run/kge/jupyter_server_config.json",
                "--ServerApp.ip=0.0.0.0", f"--ServerApp.port={NOTEBOOK_PORT}", "--ServerApp.open_browser=False",
                "--ServerApp.allow_remote_access=True", "--ServerApp.root_dir=/home/work", "--LabApp.news_url=",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


MAX_EVENTS = 50  # events kept per session, the latest
SEALED = "__sealed__"  # the key of a record's env when it is sealed


@dataclass
class JobRecord:
    id: str
    owner: str
    name: str
    type: str
    image: str
    local_image: str
    cores: int
    ram: int
    gpus: int
    cmd: str | None
    args: str | None
    env: dict[str, str]
    created: float
    expiry: float
    status: str = "Pending"
    container_id: str | None = None
    start_time: float | None = None
    exit_code: int | None = None
    ip: str | None = None  # the container's address (notebook sessions are proxied to it)
    events: list[list[Any]] = field(default_factory=list)  # [type, reason, message, first, last]

    def event(self, kind: str, reason: str, message: str) -> None:
        """Record an event; a repeat of the last one (same type and reason) updates it, as
        Kubernetes counts repeats, and only the latest MAX_EVENTS are kept: a session renewed
        every minute for a month must not grow its record."""
        now = time.time()
        last = self.events[-1] if self.events else None
        if last and last[0] == kind and last[1] == reason:
            last[2], last[4] = message, now
        else:
            self.events.append([kind, reason, message, now, now])
            del self.events[:-MAX_EVENTS]


LOG_TAIL_LINES = 10_000  # what ?view=logs shows of a session's log
