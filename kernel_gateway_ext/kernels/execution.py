"""Run code for REST callers (the Backend.AI v2 execute call) on a store kernel.

A `Runner` per kernel keeps its own shell/stdin sockets, reads the kernel's one iopub subscription
(iopub.py), and turns the kernel's messages into Backend.AI console items. Unused for the kernel's
`output_release_after` with no run in progress, it lets them go (two ZMQ connections, ~30 KiB each,
and its hold on the subscription); the next call connects again and waits for one probe. A run
answers when it finishes, waits for input, or has run for `flush_interval` (status `continued`: the
client asks again with mode `continue`). `execTimeout` interrupts the kernel and tells the client, whether or
not the client is polling at that moment (a timer per run); the kernel stays usable.
"""
from __future__ import annotations

import asyncio
import functools
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from jupyter_client.session import Session
from zmq.eventloop.zmqstream import ZMQStream

from ..errors import BadRequest, Conflict, KernelDead
from .channels import kernel_stream
from .iopub import IopubHub, Watched, hub_of


class RunnableKernel(Watched, Protocol):
    """What a Runner needs of its kernel (GatewayKernel is one)."""

    num_queries: int

    def interrupt_kernel(self) -> Any: ...  # awaitable

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Output a run keeps until its caller polls: past it, items are dropped (and the caller told how
# much). A kernel printing forever to a caller who never polls used to grow the gateway without end.
MAX_RUN_OUTPUT = 8 * 2**20
MEDIA_TYPES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")


def log_item(level: str, msg: str) -> list[Any]:
    """A `log` console item: what the gateway itself tells the caller about a run."""
    return ["log", json.dumps({"levelname": level, "name": "kernel_gateway_ext", "msg": msg, "created": time.time()})]


def console_items(msg_type: str, content: dict[str, Any]) -> list[list[Any]]:
    """One iopub message -> Backend.AI console items."""
    if msg_type == "stream":
        return [[content.get("name", "stdout"), content.get("text", "")]]
    if msg_type in ("execute_result", "display_data"):
        data = content.get("data") or {}
        for mime in MEDIA_TYPES:
            if mime in data:
                return [["media", [mime, data[mime]]]]
        if "text/html" in data:
            return [["html", data["text/html"]]]
        text = data.get("text/plain")
        if text is not None:
            return [["stdout", text + "\n"]]
        return []
    if msg_type == "error":
        tb = "\n".join(content.get("traceback") or []) or f"{content.get('ename')}: {content.get('evalue')}"
        return [["stderr", ANSI.sub("", tb) + "\n"]]
    return []


@dataclass
class Run:
    run_id: str
    msg_id: str
    started: float
    timeout: float | None
    console: list[list[Any]] = field(default_factory=list)
    reply: dict[str, Any] | None = None
    idle: bool = False
    input_request: dict[str, Any] | None = None  # header + content of a pending input_request
    timed_out: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    kept: int = 0  # bytes of output held since the last poll
    dropped: int = 0  # bytes of output dropped since the last poll
    timer: asyncio.TimerHandle | None = None  # fires at execTimeout

    @property
    def done(self) -> bool:
        return self.reply is not None and self.idle

    def add(self, items: list[list[Any]]) -> None:
        # Consecutive stream text of one kind becomes one item, as Backend.AI's console does; its
        # pieces are joined once, when the caller polls (joining at each print is quadratic).
        for item in items:
            size = len(item[1]) if isinstance(item[1], str) else len(json.dumps(item[1]))
            if self.kept + size > MAX_RUN_OUTPUT:
                self.dropped += size
                continue
            self.kept += size
            last = self.console[-1] if self.console else None
            if last is not None and item[0] in ("stdout", "stderr") and last[0] == item[0] and isinstance(last[1], _Pieces):
                last[1].append(item[1])
            elif item[0] in ("stdout", "stderr"):
                self.console.append([item[0], _Pieces([item[1]])])
            else:
                self.console.append(item)
        self.changed.set()

    def take(self) -> list[list[Any]]:
        """The console items since the last poll (and a note of what was dropped)."""
        console = [[k, "".join(v) if isinstance(v, _Pieces) else v] for k, v in self.console]
        if self.dropped:
            console.append(log_item("WARNING", f"{self.dropped} bytes of output were dropped: more than "
                                               f"{MAX_RUN_OUTPUT} bytes came between two polls"))
        self.console, self.kept, self.dropped = [], 0, 0
        return console


class _Pieces(list):
    """The text pieces of one console item, joined when taken."""


class Runner:
    """Executes code on one kernel for REST callers; one run at a time."""

    def __init__(self, km: RunnableKernel, flush_interval: float) -> None:
        self.km = km
        self.flush_interval = flush_interval
        self.session = Session(key=km.session.key, signature_scheme=km.session.signature_scheme)
        self.current: Run | None = None
        self._streams: dict[str, ZMQStream] = {}
        self._hub: IopubHub | None = None
        self._generation = -1
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._lock = asyncio.Lock()
        self._interrupting: asyncio.Future[Any] | None = None
        self._last_used = time.monotonic()
        self._release: asyncio.TimerHandle | None = None

    def _connect(self) -> None:
        self._close_streams()

        ident = uuid.uuid4().hex.encode()
        for channel in ("shell", "stdin"):
            stream = kernel_stream(self.km, channel, ident)
            stream.on_recv(functools.partial(self._on_recv, channel))
            self._streams[channel] = stream
        self._hub = hub_of(self.km)
        self._hub.subscribe(self._on_iopub)
        self._generation = self.km.generation

    def _on_iopub(self, parts: list[bytes]) -> None:
        self._on_recv("iopub", parts)

    def _on_recv(self, channel: str, parts: list[bytes]) -> None:
        try:
            _, fed = self.session.feed_identities(parts)
            msg = self.session.deserialize(fed)
        except Exception:  # noqa: BLE001 - malformed: ignore
            return
        self._dispatch(channel, msg)

    def _dispatch(self, channel: str, msg: dict[str, Any]) -> None:
        parent = (msg.get("parent_header") or {}).get("msg_id")
        waiter = self._replies.pop(parent, None) if channel == "shell" and isinstance(parent, str) else None
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)
            return
        run = self.current
        if run is None or parent != run.msg_id:
            return
        t = msg["header"]["msg_type"]
        if channel == "iopub":
            if t == "status":
                if msg["content"].get("execution_state") == "idle":
                    run.idle = True
                    self._settled(run)
                    run.changed.set()
            else:
                run.add(console_items(t, msg["content"]))
        elif channel == "shell" and t == "execute_reply":
            run.reply = msg["content"]
            self._settled(run)
            run.changed.set()
        elif channel == "stdin" and t == "input_request":
            run.input_request = {"header": msg["header"], "content": msg["content"]}
            prompt = msg["content"].get("prompt") or ""
            run.add([["stdout", prompt]] if prompt else [])
            run.changed.set()

    async def _ensure(self) -> None:
        if self.km.execution_state == "dead":
            raise KernelDead("the kernel is dead; restart it")
        if not self._streams or self._generation != self.km.generation:
            self._connect()
            await self._subscribed()

    async def _subscribed(self, timeout: float = 30.0) -> None:
        """Until the kernel's output subscription is live: no output of a run is lost."""
        assert self._hub is not None
        await self._hub.ready(timeout)

    def _used(self) -> None:
        """A call ended: the sockets go after the kernel's output_release_after without another."""
        self._last_used = time.monotonic()
        after = self.km.output_release_after
        if self._release is None and after > 0 and self._streams:
            self._release = asyncio.get_running_loop().call_later(after, self._maybe_release)

    def _maybe_release(self) -> None:
        self._release = None
        after = self.km.output_release_after
        if not self._streams or after <= 0:
            return
        run = self.current
        unused_for = time.monotonic() - self._last_used
        if self._lock.locked() or self._replies or (run is not None and not run.done):
            unused_for = 0.0  # in use, or a run still going (its output keeps coming in for the caller's next poll)
        if unused_for < after:  # checked again when due, as the kernel's subscription is (iopub.py)
            self._release = asyncio.get_running_loop().call_later(after - unused_for, self._maybe_release)
            return
        self._close_streams()  # the finished run stays: a late `continue` still gets its answer

    # ---- the v2 execute modes -------------------------------------------------------------------
    async def execute(self, mode: str, code: str, run_id: str | None, exec_timeout: float | None) -> dict[str, Any]:
        async with self._lock:
            try:
                return await self._execute(mode, code, run_id, exec_timeout)
            finally:
                self._used()

    async def _execute(self, mode: str, code: str, run_id: str | None, exec_timeout: float | None) -> dict[str, Any]:
        await self._ensure()
        run = self.current
        if mode == "query":
            if run is not None and not run.done and run.run_id != run_id:
                raise Conflict("another run is in progress on this kernel; continue or interrupt it")
            if run is None or run.done or run.run_id != run_id:
                run = self._start(code, run_id or uuid.uuid4().hex, exec_timeout)
                self.km.num_queries += 1
        elif mode == "continue":
            if run is None or (run_id and run.run_id != run_id):
                raise BadRequest("no such run to continue")
        elif mode == "input":
            if run is None or run.input_request is None or (run_id and run.run_id != run_id):
                raise BadRequest("the run is not waiting for input")
            reply = self.session.msg("input_reply", {"value": code}, parent=run.input_request["header"])
            run.input_request = None
            self.session.send(self._streams["stdin"], reply)
        else:
            raise BadRequest(f"unknown mode {mode!r}")
        return await self._collect(run)

    def _start(self, code: str, run_id: str, exec_timeout: float | None) -> Run:
        msg = self.session.msg("execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": True, "stop_on_error": True,
        })
        run = Run(run_id=run_id, msg_id=msg["header"]["msg_id"], started=time.monotonic(), timeout=exec_timeout)
        self.current = run
        self.session.send(self._streams["shell"], msg)
        if exec_timeout:
            run.timer = asyncio.get_running_loop().call_later(exec_timeout, self._time_out, run)
        self.km.touch()
        return run

    @staticmethod
    def _settled(run: Run) -> None:
        if run.done and run.timer is not None:
            run.timer.cancel()
            run.timer = None

    def _time_out(self, run: Run) -> None:
        """execTimeout passed: interrupt now, not when (or if) the caller polls again."""
        run.timer = None
        if run.done or run.timed_out or self.current is not run:
            return
        run.timed_out = True
        run.add([log_item("WARNING", f"Execution timed out after {run.timeout:g} s (execTimeout): interrupted.")])
        self._interrupting = asyncio.ensure_future(self._interrupt())

    async def _interrupt(self) -> None:
        try:
            await self.km.interrupt_kernel()
        except Exception as e:  # noqa: BLE001 - a dead kernel needs no interrupt; its run ends with it
            self.km.log.warning("Kernel %s: interrupt at execTimeout failed: %s", self.km.kernel_id, e)

    async def _collect(self, run: Run) -> dict[str, Any]:
        """Wait until the run finishes, asks for input, or `flush_interval` passes."""
        flush_at = time.monotonic() + self.flush_interval
        interrupt_seen = run.timed_out
        while True:
            run.changed.clear()  # before the checks: a wake-up in between is not lost
            if run.done or run.input_request is not None:
                break
            now = time.monotonic()
            if run.timed_out and not interrupt_seen:
                interrupt_seen = True
                flush_at = max(flush_at, now + 5.0)  # give the interrupt time to land
            if now >= flush_at:
                break
            try:
                await asyncio.wait_for(run.changed.wait(), max(0.0, flush_at - now))
            except asyncio.TimeoutError:
                pass
        console = run.take()
        self.km.touch()
        result: dict[str, Any] = {"runId": run.run_id, "console": console, "options": {}}
        if run.input_request is not None:
            result["status"] = "waiting-input"
            result["options"] = {"is_password": bool(run.input_request["content"].get("password"))}
        elif run.done:
            assert run.reply is not None
            result["status"] = "finished"
            result["exitCode"] = 0 if run.reply.get("status") == "ok" and not run.timed_out else 1
        else:
            result["status"] = "continued"
        return result

    async def request(self, msg_type: str, content: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """A shell request with one reply (complete, inspect)."""
        async with self._lock:
            await self._ensure()
            msg = self.session.msg(msg_type, content)
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._replies[msg["header"]["msg_id"]] = fut
            self.session.send(self._streams["shell"], msg)
            try:
                return await asyncio.wait_for(fut, timeout)
            finally:
                self._replies.pop(msg["header"]["msg_id"], None)
                self._used()

    def reset(self) -> None:
        """After a restart: the old run is gone with the old process; resubscribe on next use."""
        self.close()
        self.current = None

    def close(self) -> None:
        """The kernel is going (or restarting): its run's execTimeout must not fire on it later."""
        if self.current is not None and self.current.timer is not None:
            self.current.timer.cancel()
            self.current.timer = None
        if self._release is not None:
            self._release.cancel()
            self._release = None
        self._close_streams()

    def _close_streams(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams = {}
        if self._hub is not None:
            self._hub.unsubscribe(self._on_iopub)
            self._hub = None
