"""The Swarm manager's node events: which nodes went down (and so lost their containers).

The manager marks a node down when its heartbeats stop (engine stopped, network cut): a few
dispatcher heartbeat periods (5 s by default; scripts/swarm-cluster sets 2 s, about 6 s in all).
One thread follows `docker events --filter type=node` on the manager, as DockerEngine follows
container events: nothing polls. When the stream (re)connects, or a node engine's own stream
breaks, the nodes are read once, so a node that went down meanwhile is not missed.

The manager's word alone is not enough: a manager that restarts marks every node down and counts
them back as each one's agent registers again, which can take longer than its grace period; the
node and its kernels ran on meanwhile. So every "down" is confirmed before a kernel is declared
dead (see NodeWatch), and a doubted one is checked again until it reads ready."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .engine import DockerEngine

NodeCallback = Callable[[str, str, str], None]  # (node hostname, state, message)
GOSSIP_PORT = 7946  # every Swarm node listens on it (TCP and UDP) for its peers
REACH_TIMEOUT = 1.0  # s: a node on the cluster's network answers a SYN in milliseconds
RECHECK_EVERY = 2.0  # s: a doubted "down" is checked again this often until the node reads ready
RECHECKS = 90  # ... for at most 3 minutes; then the manager's word stands


def reachable(address: str, port: int = GOSSIP_PORT, timeout: float = REACH_TIMEOUT) -> bool:
    """Does `address` answer on the network? A refused connection answers too; only silence
    (a cut link, a host that is gone) or no route is "not reachable"."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def translate_lost(node: str, message: str) -> dict[str, Any]:
    """The container event a node's loss means for each container on it: it died, and why."""
    reason = f"node {node} is down" + (f" ({message})" if message else "")
    return {"Action": "die", "Actor": {"Attributes": {"exitCode": "-1", "kge.reason": reason}}}


class NodeWatch:
    """`confirm(node, address)` says whether a node the manager says is down really is lost (its
    engine does not answer, or its address does not: see SwarmBackend._node_lost). A down that is
    not confirmed is doubted: nothing is reported, and it is checked again every RECHECK_EVERY s
    until the node reads ready (or is confirmed lost)."""

    def __init__(self, manager: DockerEngine, callback: NodeCallback,
                 confirm: Callable[[str, str | None], bool]) -> None:
        self.manager = manager
        self.log = manager.log  # the gateway's own log
        self.callback = callback
        self.confirm = confirm
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        self._closed = False
        self._lock = threading.Lock()
        self._down: set[str] = set()
        self._doubted: dict[str, int] = {}  # node → checks left
        self._addresses: dict[str, str] = {}  # node → its address, from the last listing

    def ensure(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._closed = False
                self._thread = threading.Thread(target=self._follow, name="swarm-nodes", daemon=True)
                self._thread.start()

    def check_soon(self) -> None:
        threading.Thread(target=self._read_all, name="swarm-nodes-check", daemon=True).start()

    def _down_said(self, name: str, message: str, again: bool = False) -> None:
        """The manager says `name` is down: report it if confirmed, else doubt it (one chain of
        rechecks per node; `again` is that chain's own look)."""
        if name not in self._addresses:
            self._read_addresses()
        if self.confirm(name, self._addresses.get(name)):
            with self._lock:
                self._doubted.pop(name, None)
            self._report(name, "down", message)
            return
        with self._lock:
            if name in self._doubted and not again:
                return  # doubted already: its rechecks are under way
            left = self._doubted.get(name, RECHECKS + 1) - 1
            if left <= 0:
                self._doubted.pop(name, None)
            else:
                self._doubted[name] = left
        if not again:
            self.log.warning("The swarm's manager says node %s is down, but it answers: its kernels are kept", name)
        if left <= 0:
            self._report(name, "down", message)  # doubted for long enough: the manager's word stands
            return
        self._recheck_later(name, message)

    def _recheck_later(self, name: str, message: str) -> None:
        timer = threading.Timer(RECHECK_EVERY, self._recheck, (name, message))
        timer.daemon = True
        timer.start()

    def _recheck(self, name: str, message: str) -> None:
        with self._lock:
            if name not in self._doubted or self._closed:
                return
        state = self._read_all(only=name, again=True)
        if state is None:  # the manager is away: ask again later
            self._recheck_later(name, message)
        elif state != "down":  # back (or no longer listed): no more doubt
            with self._lock:
                self._doubted.pop(name, None)

    def _report(self, name: str, state: str, message: str) -> None:
        with self._lock:
            if state != "down":
                self._down.discard(name)
                self._doubted.pop(name, None)
            elif name in self._down:
                return  # already told
            else:
                self._down.add(name)
        self.callback(name, state, message)

    def _read_addresses(self) -> None:
        self._read_all(only="")  # learns the addresses, reports nothing

    def _read_all(self, only: str | None = None, again: bool = False) -> str | None:
        """Read the nodes and report each one's state (or only the node named `only`); returns
        that node's state, or None if the manager does not answer."""
        try:
            nodes = self.manager.client.api.nodes()
        except Exception as e:  # noqa: BLE001 - the manager is away; its stream's reconnect reads again
            self.log.warning("could not read the swarm's nodes: %s", type(e).__name__)
            return None
        found = "unknown"
        for n in nodes:
            status = n.get("Status") or {}
            name = str((n.get("Description") or {}).get("Hostname") or n.get("ID"))
            if status.get("Addr"):
                self._addresses[name] = str(status["Addr"])
            if only is not None and name != only:
                continue
            state = found = str(status.get("State") or "unknown")
            if state == "down":
                self._down_said(name, str(status.get("Message") or ""), again)
            else:
                self._report(name, state, "")
        return found

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
                    name = str(attrs.get("name") or "")
                    if new == "down":
                        self._down_said(name, "heartbeats stopped")
                    elif new:
                        self._report(name, str(new), "")
            except Exception as e:  # noqa: BLE001 - the manager went away; reconnect
                if self._closed:
                    return
                self.log.warning("Swarm node event stream lost (%s); reconnecting", type(e).__name__)
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
