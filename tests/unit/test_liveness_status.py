"""The activity watcher reads a kernel's state from status messages' small frames only."""
from __future__ import annotations

import zmq
from jupyter_client.session import Session

from kernel_gateway_ext.kernels.iopub import status_of


class Untouchable(zmq.Frame):
    """A content frame that must not be read (one huge output)."""

    @property
    def bytes(self) -> bytes:  # type: ignore[override]
        raise AssertionError("the output's content was read")


def frames(session: Session, msg_type: str, content: dict, parent_type: str = "execute_request") -> list:
    return [zmq.Frame(p) for p in session.serialize(session.msg(msg_type, content, parent=session.msg(parent_type, {})))]


def test_status_of_reads_busy_and_idle_and_ignores_the_rest() -> None:
    s = Session(key=b"key")
    assert status_of(frames(s, "status", {"execution_state": "busy"}), s) == "busy"
    assert status_of(frames(s, "status", {"execution_state": "idle"}), s) == "idle"
    assert status_of(frames(s, "status", {"execution_state": "starting"}), s) is None
    assert status_of(frames(s, "status", {"execution_state": "idle"}, "kernel_info_request"), s) is None
    forged = Session(key=b"other")
    assert status_of(frames(forged, "status", {"execution_state": "busy"}), s) is None
    assert status_of([zmq.Frame(b"garbage")], s) is None
    out = frames(s, "display_data", {"data": {"text/plain": "x" * 1000}})
    out[-1] = Untouchable(out[-1].bytes)
    assert status_of(out, s) is None
