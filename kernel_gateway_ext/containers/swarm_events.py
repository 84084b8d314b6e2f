"""The Swarm manager's node events: which nodes went down (and so lost their containers).

The manager marks a node down when its heartbeats stop (engine stopped, network cut): a few
dispatcher heartbeat periods (5 s by default; scripts/swarm-cluster sets 2 s, about 6 s in all).
One thread follows `docker events --filter type=node` on the manager, as DockerEngine follows
container events: nothing polls. When the stream (re)connects, or a node engine's own stream
breaks, the nodes are read once, so a node that went down meanwhile is not missed."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .engine import DockerEngine

log = logging.getLogger(__name__)

NodeCallback = Callable[[str, str, str], None]  # (node hostname, state, message)


def translate_lost(node: str, message: str) -> dict[str, Any]:
    """The container event a node's loss means for each container on it: it died, and why."""
    reason = f"node {node} is down" + (f" ({message})" if message else "")
    return {"Action": "die", "Actor": {"Attributes": {"exitCode": "-1", "kge.reason": reason}}}


class NodeWatch:
    """`confirm(node)` says whether a node the manager lists as down really is: a manager that
    has just restarted lists nodes from its store, where a node that came back after being down
    can still read down until it reports in again. A transition event (ready → down) is believed;
    a down in a listing is believed only if `confirm` agrees (the node's engine does not answer)."""

    def __init__(self, manager: DockerEngine, callback: NodeCallback, confirm: Callable[[str], bool]) -> None:
        self.manager = manager
        self.callback = callback
        self.confirm = confirm
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        self._closed = False
        self._lock = threading.Lock()
        self._down: set[str] = set()

    def ensure(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._closed = False
                self._thread = threading.Thread(target=self._follow, name="swarm-nodes", daemon=True)
                self._thread.start()

    def check_soon(self) -> None:
        threading.Thread(target=self._read_all, name="swarm-nodes-check", daemon=True).start()

    def _report(self, name: str, state: str, message: str) -> None:
        with self._lock:
            if state != "down":
                self._down.discard(name)
            elif name in self._down:
                return  # already told
            else:
                self._down.add(name)
        self.callback(name, state, message)

    def _read_all(self) -> None:
        try:
            nodes = self.manager.client.api.nodes()
        except Exception as e:  # noqa: BLE001 - the manager is away; its stream's reconnect reads again
            log.warning("could not read the swarm's nodes: %s", type(e).__name__)
            return
        for n in nodes:
            status = n.get("Status") or {}
            name = str((n.get("Description") or {}).get("Hostname") or n.get("ID"))
            state = str(status.get("State") or "unknown")
            if state == "down" and not self.confirm(name):
                continue
            self._report(name, state, str(status.get("Message") or ""))

    def _follow(self) -> None:
        backoff = 0.5
        while not self._closed:
            try:
                stream = self.manager.client.events(decode=True, filters={"type": "node"})
                self._stream = stream
                self._read_all()
                backoff = 0.5
                for event in stream:
                    attrs = (event.get("Actor") or {}).get("Attributes") or {}
                    new = attrs.get("state.new")
                    if new:
                        self._report(str(attrs.get("name") or ""), str(new), "heartbeats stopped"
                                     if new == "down" else "")
            except Exception as e:  # noqa: BLE001 - the manager went away; reconnect
                if self._closed:
                    return
                log.warning("Swarm node event stream lost (%s); reconnecting", type(e).__name__)
            if not self._closed:
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def close(self) -> None:
        self._closed = True
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001
                pass
