"""ZMQ connections to a kernel's channels, shared by every part that talks to a kernel (the websocket
bridge, REST runs, the activity watcher, the pool's readiness probe)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol, cast

import zmq
import zmq.asyncio
from jupyter_client.session import Session
from zmq.eventloop.zmqstream import ZMQStream

# Reconnect quickly to a restarted kernel (ZMQ's default waits 100 ms), backing off when it is gone.
RECONNECT_IVL_MS, RECONNECT_IVL_MAX_MS = 20, 1000


class HasConnectionInfo(Protocol):
    def get_connection_info(self, session: bool = False) -> Any: ...


def raise_socket_limits(*contexts: zmq.Context[Any]) -> int:
    """Let the gateway hold as many ZMQ sockets as its file descriptors allow. libzmq stops a
    context at 1023 sockets, and the gateway holds one per watched kernel (iopub.py) plus three per
    client session (kept 60 s after a websocket closes): ~200 kernels with clients reached it (then
    four per session) and starts failed. The soft fd limit is raised to the hard one; each socket
    takes two fds (its mailbox and its connection). Returns the limit set; a context that already
    has sockets keeps its own."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ValueError, OSError):
            pass
    most = max(int(zmq.Context.instance().max_sockets), soft // 2)
    for ctx in (zmq.Context.instance(), zmq.asyncio.Context.instance(), *contexts):
        ctx.max_sockets = most
    return most


def zmq_url(info: Mapping[str, Any], channel: str) -> str:
    """A kernel channel's endpoint, as jupyter_client makes it (IPC: a socket file `<ip>-<port>`)."""
    if info["transport"] == "ipc":
        return f"ipc://{info['ip']}-{info[channel + '_port']}"
    return f"{info['transport']}://{info['ip']}:{info[channel + '_port']}"


def kernel_stream(km: HasConnectionInfo, channel: str, identity: bytes | None = None) -> ZMQStream:
    """A ZMQStream on the IOLoop to one of the kernel's channels (iopub: subscribed to all).

    ZMQStreams, not zmq.asyncio recv futures: with sends on the same socket from elsewhere, a
    pending asyncio recv can miss its edge-triggered wake-up and never see a reply."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB if channel == "iopub" else zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    if channel == "iopub":
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    elif identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)  # stdin replies route to the shell sender's identity
    sock.connect(zmq_url(km.get_connection_info(), channel))
    return ZMQStream(sock)


def message_frames(session: Session, parts: list[bytes]) -> list[bytes]:
    """A received message's frames after its identities (from `<IDS|MSG>` on), as bytes: the parts
    were received copied, so no frame is a zmq.Frame."""
    _, fed = session.feed_identities(parts)
    return cast("list[bytes]", fed)


def parent_id(session: Session, parts: list[bytes]) -> str | None:
    """The msg_id of a received message's parent (the request it answers), None when it has none
    or cannot be read."""
    try:
        found = json.loads(message_frames(session, parts)[2]).get("msg_id")
    except Exception:  # noqa: BLE001 - malformed: no parent
        return None
    return found if isinstance(found, str) else None
