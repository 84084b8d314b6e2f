"""A kernel's one iopub subscription, shared by every reader of its output.

Each reader used to open a SUB socket of its own: the activity watcher, every client session's
websocket bridge, the REST runner. A new SUB is ZMQ's "slow joiner": what the kernel publishes
before the subscription reaches it is lost, so each had to probe the kernel (kernel_info) until a
message came through, which was ~8 ms of every websocket's first execute. Now a kernel has one
subscription: it reads busy/idle and activity for the store and hands each message, in order, to
every subscriber (a bridge, a runner), which is what a SUB of its own would have received. Once a
message has come through since the kernel process last changed, the subscription is live and a
new reader waits for nothing; a pooled kernel's is live before it is handed out.

A subscription nobody reads, on an idle kernel that has published nothing for `release_after`
seconds (the kernel's `output_release_after`), is let go: its ZMQ connection is ~30 KiB of the
gateway's memory and two file descriptors per idle kernel. Nothing is lost by it: every request
reaches a kernel through a reader (a websocket session, a REST run), which subscribes again (one
probe) before it sends anything; a busy kernel keeps its subscription until it is idle. What the
gateway no longer sees meanwhile is output a kernel prints unasked (a thread of its own) after a
quiet spell with nobody connected: it no longer counts as activity for culling.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from hmac import compare_digest
from typing import Any, Protocol

import zmq
from jupyter_client.session import DELIM, Session
from tornado.ioloop import IOLoop

from .channels import HasConnectionInfo, kernel_stream, parent_id, zmq_url

# Requests whose status messages do not make a kernel "busy" for clients and culling.
UNTRACKED_PARENTS = {"kernel_info_request", "comm_info_request", "shutdown_request", "interrupt_request"}
PROBE_FIRST, PROBE_MAX = 0.02, 0.5  # seconds between probes, doubling
PROBE_FORGET = 2.0  # a late probe's status is still dropped this long after the probe ended

Subscriber = Callable[[list[bytes]], None]


def status_of(frames: list[Any], session: Session) -> str | None:
    """'busy' or 'idle' from a status message that counts, read from its small frames only; None for
    any other message (its content is never touched). A status message's signature is checked."""
    try:
        idx = next(i for i, f in enumerate(frames[:16]) if len(f) == len(DELIM) and f.bytes == DELIM)
        header = json.loads(frames[idx + 2].bytes)
        if header.get("msg_type") != "status":
            return None
        signed = [frames[idx + k].bytes for k in range(2, 6)]
        if session.auth is not None and not compare_digest(frames[idx + 1].bytes, session.sign(signed)):
            return None
        if (json.loads(signed[1]) or {}).get("msg_type") in UNTRACKED_PARENTS:
            return None
        state = json.loads(signed[3]).get("execution_state")
    except Exception:  # noqa: BLE001 - a malformed message is not our problem here
        return None
    return state if state in ("busy", "idle") else None


class Watched(HasConnectionInfo, Protocol):
    """What the hub needs of its kernel (GatewayKernel is one)."""

    kernel_id: str
    session: Session
    generation: int  # bumped when the kernel's address changes: a new subscription
    restarting: bool
    execution_state: str
    iopub: IopubHub | None
    output_release_after: float  # s; 0: its subscription is never let go (a pooled kernel's)
    on_output_released: Callable[[], None] | None
    log: Any

    def touch(self) -> None: ...


class IopubHub:
    """The subscription of one kernel address (one `generation` of the kernel)."""

    def __init__(self, km: Watched) -> None:
        self.km = km
        self.generation = km.generation
        self.subscribers: list[Subscriber] = []
        self.live = False  # a message came through since the kernel process last changed
        self.closed = False
        self.probes = 0  # how often a reader had to wait for the subscription (for the tests)
        self.last_message = time.monotonic()
        self._release: asyncio.TimerHandle | None = None
        self._seen: asyncio.Future[None] | None = None
        self._probe: asyncio.Future[None] | None = None
        self._probe_ids: set[str] = set()
        self.stream = kernel_stream(km, "iopub")
        # Frames, not bytes: with no subscriber an output's frames are never copied or hashed here
        # (one display() of 300 MB used to be copied once more and its HMAC computed on the loop).
        self.stream.on_recv(self._recv, copy=False)

    def _recv(self, frames: list[Any]) -> None:
        km = self.km
        self.live = True
        self.last_message = time.monotonic()
        if self._seen is not None and not self._seen.done():
            self._seen.set_result(None)
        km.touch()
        state = status_of(frames, km.session)  # signing is stateless: no Session of its own
        if state is not None and not km.restarting:
            km.execution_state = state
        if not self.subscribers:
            return
        parts = [f.bytes for f in frames]  # once for every subscriber
        if self._probe_ids and parent_id(km.session, parts) in self._probe_ids:
            return  # our probe's status is nobody's business
        for deliver in list(self.subscribers):
            try:
                deliver(parts)
            except Exception:  # noqa: BLE001 - one broken reader must not starve the others
                km.log.exception("Kernel %s: an output subscriber failed", km.kernel_id)

    def subscribe(self, deliver: Subscriber) -> None:
        self.subscribers.append(deliver)

    def unsubscribe(self, deliver: Subscriber) -> None:
        if deliver in self.subscribers:
            self.subscribers.remove(deliver)
        if not self.subscribers:
            self.release_when_unread()

    def release_when_unread(self) -> None:
        """Let the subscription go once nobody reads it, the kernel is idle and has been quiet for
        the kernel's output_release_after (checked then, not on every message)."""
        after = self.km.output_release_after
        if self._release is None and after > 0 and not self.closed:
            self._release = asyncio.get_running_loop().call_later(after, self._maybe_release)

    def _maybe_release(self) -> None:
        self._release = None
        km = self.km
        if self.closed or self.subscribers or km.output_release_after <= 0:
            return
        quiet_for = time.monotonic() - self.last_message
        if km.execution_state == "busy" or km.restarting or (self._probe is not None and not self._probe.done()):
            quiet_for = 0.0  # busy: its idle status is still to come
        if quiet_for < km.output_release_after:
            self._release = asyncio.get_running_loop().call_later(km.output_release_after - quiet_for, self._maybe_release)
            return
        self.close()
        if km.iopub is self:
            km.iopub = None  # the next reader subscribes again (hub_of)
        if km.on_output_released is not None:
            km.on_output_released()

    def replaced(self) -> None:
        """The kernel process behind the address changed (a restart): the SUB reconnects by itself,
        but until a message comes through again its subscription may not have reached the new one."""
        self.live = False

    def ready(self, timeout: float) -> asyncio.Future[None]:
        """Resolves once what the kernel publishes from now on reaches the subscribers: at once when
        live, else once a probe's message came through (or after `timeout`: the kernel does not
        answer; the caller goes on, as before a probe). One probe at a time, shared by every caller,
        and shielded: a caller that gives up does not stop it."""
        if self.live:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._run_probe(timeout))
        return asyncio.shield(self._probe)

    async def _run_probe(self, timeout: float) -> None:
        """kernel_info on a shell socket of our own until a message comes through."""
        km = self.km
        self.probes += 1
        seen = self._seen = asyncio.get_running_loop().create_future()
        sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(zmq_url(dict(km.get_connection_info()), "shell"))
        deadline = time.monotonic() + timeout
        interval = PROBE_FIRST
        ids: set[str] = set()
        try:
            while not seen.done() and not self.closed and time.monotonic() < deadline:
                msg = km.session.msg("kernel_info_request")
                ids.add(msg["header"]["msg_id"])
                self._probe_ids.add(msg["header"]["msg_id"])
                km.session.send(sock, msg)
                try:
                    await asyncio.wait_for(asyncio.shield(seen), interval)
                except asyncio.TimeoutError:
                    interval = min(interval * 2, PROBE_MAX)
        finally:
            sock.close(0)
            self._seen = None
            IOLoop.current().call_later(PROBE_FORGET, lambda: self._probe_ids.difference_update(ids))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.subscribers.clear()
        if self._release is not None:
            self._release.cancel()
            self._release = None
        self.stream.close()


def hub_of(km: Watched) -> IopubHub:
    """The kernel's subscription at its current address, made (and an older one closed) if need be."""
    hub = km.iopub
    if hub is not None and not hub.closed and hub.generation == km.generation:
        return hub
    if hub is not None:
        hub.close()
    km.iopub = hub = IopubHub(km)
    return hub
