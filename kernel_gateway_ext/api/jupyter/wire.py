"""Websocket encodings of kernel messages, as jupyter_server and JupyterLab speak them.

legacy  one JSON text frame per message with a "channel" key; a message with buffers becomes a
        binary frame: big-endian uint32 count, uint32 offsets, the JSON, then each buffer.
v1      `v1.kernel.websocket.jupyter.org`: little-endian uint64 offset count, offsets, channel
        name, then the raw header, parent_header, metadata, content and buffers (no re-encoding).
"""
from __future__ import annotations

import json
import struct
from typing import Any

from jupyter_client.jsonutil import json_default

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"


def encode_legacy(msg: dict[str, Any]) -> str | bytes:
    buffers = [bytes(b) for b in (msg.get("buffers") or [])]
    body = {k: v for k, v in msg.items() if k != "buffers"}
    text = json.dumps(body, default=json_default)
    if not buffers:
        return text
    parts = [text.encode("utf8"), *buffers]
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack("!" + "I" * (len(parts) + 1), len(parts), *offsets) + b"".join(parts)


def encode_legacy_raw(channel: str, parts: list[bytes]) -> str:
    """A kernel message without buffers -> legacy text frame, splicing the kernel's own JSON parts
    ([header, parent_header, metadata, content]) instead of parsing and re-encoding them."""
    header = json.loads(parts[0])
    return (
        '{"header":%s,"msg_id":%s,"msg_type":%s,"parent_header":%s,"metadata":%s,"content":%s,'
        '"buffers":[],"channel":%s}'
        % (
            bytes(parts[0]).decode("utf8"),
            json.dumps(header.get("msg_id", "")),
            json.dumps(header.get("msg_type", "")),
            bytes(parts[1]).decode("utf8"),
            bytes(parts[2]).decode("utf8"),
            bytes(parts[3]).decode("utf8"),
            json.dumps(channel),
        )
    )


def decode_legacy(frame: str | bytes) -> dict[str, Any]:
    """A client frame -> message dict (buffers as bytes). Raises ValueError when malformed."""
    if isinstance(frame, str):
        msg = json.loads(frame)
        buffers: list[bytes] = []
    else:
        if len(frame) < 4:
            raise ValueError("short binary frame")
        (count,) = struct.unpack("!I", frame[:4])
        if count < 1 or len(frame) < 4 * (count + 1):
            raise ValueError("bad binary frame header")
        offsets = list(struct.unpack("!" + "I" * count, frame[4 : 4 * (count + 1)]))
        offsets.append(len(frame))
        if any(b < a for a, b in zip(offsets, offsets[1:])):
            raise ValueError("bad binary frame offsets")
        chunks = [frame[a:b] for a, b in zip(offsets, offsets[1:])]
        msg = json.loads(chunks[0].decode("utf8"))
        buffers = chunks[1:]
    if not isinstance(msg, dict):
        raise ValueError("message is not an object")
    msg["buffers"] = buffers
    return msg


def encode_v1(channel: str, parts: list[bytes]) -> bytes:
    """`parts` = [header, parent_header, metadata, content, *buffers], already serialized."""
    chan = channel.encode("utf-8")
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(chan))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return head + chan + b"".join(bytes(p) for p in parts)


def decode_v1(frame: bytes) -> tuple[str, list[bytes]]:
    if len(frame) < 8:
        raise ValueError("short v1 frame")
    count = int.from_bytes(frame[:8], "little")
    if count < 3 or len(frame) < 8 * (count + 1):
        raise ValueError("bad v1 frame header")
    offsets = [int.from_bytes(frame[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
    if offsets[-1] > len(frame) or any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError("bad v1 frame offsets")
    channel = frame[offsets[0] : offsets[1]].decode("utf-8")
    parts = [frame[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]
    if len(parts) < 4:
        raise ValueError("v1 frame has fewer than 4 message parts")
    return channel, parts
