"""Our websocket encodings must match jupyter_server's own, byte for byte."""
import json

import pytest
from jupyter_server.services.kernels.connection import base as js

from kernel_gateway_ext.api.jupyter import wire


def test_v1_roundtrip_matches_jupyter_server() -> None:
    parts = [b'{"msg_type":"execute_request"}', b"{}", b"{}", b'{"code":"1"}', b"\x00\x01buffer"]
    ours = wire.encode_v1("shell", parts)
    assert ours == js.serialize_msg_to_ws_v1(parts, "shell")
    assert js.deserialize_msg_from_ws_v1(ours) == ("shell", parts)
    assert wire.decode_v1(ours) == ("shell", parts)


def test_legacy_binary_matches_jupyter_server() -> None:
    msg = {"header": {"msg_type": "comm_msg"}, "parent_header": {}, "metadata": {}, "content": {"a": 1},
           "channel": "shell", "buffers": [b"abc", b"\x00" * 5]}
    ours = wire.encode_legacy(msg)
    theirs = js.serialize_binary_message(dict(msg))
    assert isinstance(ours, bytes)
    assert js.deserialize_binary_message(ours)["content"] == {"a": 1}
    assert wire.decode_legacy(theirs)["buffers"] == [b"abc", b"\x00" * 5]
    assert wire.decode_legacy(theirs)["channel"] == "shell"


def test_legacy_text_without_buffers() -> None:
    out = wire.encode_legacy({"header": {}, "content": {}, "buffers": []})
    assert isinstance(out, str) and json.loads(out) == {"header": {}, "content": {}}


@pytest.mark.parametrize("frame", [b"", b"\x00\x00\x00\x09", b"\x00\x00\x00\x02\x00\x00\x00\x50\x00\x00\x00\x01", "[1]", "nope"])
def test_legacy_rejects_malformed(frame) -> None:
    with pytest.raises(ValueError):
        wire.decode_legacy(frame)


@pytest.mark.parametrize("frame", [b"", b"\x05" + b"\x00" * 7, (3).to_bytes(8, "little") + (999).to_bytes(8, "little") * 3])
def test_v1_rejects_malformed(frame) -> None:
    with pytest.raises(ValueError):
        wire.decode_v1(frame)


def test_raw_legacy_equals_parsed_legacy() -> None:
    parts = [b'{"msg_id":"m1","msg_type":"stream","date":"2026-01-01T00:00:00.000001Z"}', b"{}", b"{}",
             b'{"name":"stdout","text":"h\\u00e9\\n"}']
    raw = json.loads(wire.encode_legacy_raw("iopub", parts))
    assert raw == {"header": json.loads(parts[0]), "msg_id": "m1", "msg_type": "stream", "parent_header": {},
                   "metadata": {}, "content": {"name": "stdout", "text": "h\u00e9\n"}, "buffers": [], "channel": "iopub"}
