"""Frames and CRDT payloads in the protocol's two encodings, and the SSE line parser."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import msgpack

from crdt import codec

JSON = "synchub.json"
MSGPACK = "synchub.msgpack"


def encode_frame(message: dict[str, Any], binary: bool) -> str | bytes:
    if binary:
        packed: bytes = msgpack.packb(message, use_bin_type=True)
        return packed
    return json.dumps(message, separators=(",", ":"))


def decode_frame(data: str | bytes) -> dict[str, Any]:
    message = (
        msgpack.unpackb(data, raw=False, strict_map_key=False)
        if isinstance(data, bytes)
        else json.loads(data)
    )
    if not isinstance(message, dict):
        raise ValueError("a frame is an object")
    return message


def crdt_to_wire(value: Any, binary: bool) -> Any:
    """A delta or state in the frame's form: MessagePack bytes in binary frames, else the JSON-safe dict."""
    return codec.to_msgpack(value) if binary else codec.to_dict(value)


def crdt_from_wire(raw: Any) -> Any:
    """A delta or state from either form (bytes: MessagePack; a dict: JSON-safe)."""
    if isinstance(raw, (bytes, bytearray)):
        return codec.from_msgpack(bytes(raw))
    return codec.from_dict(raw)


@dataclass
class SseParser:
    """Server-Sent Events, line by line (the subset the hub sends: ``event``, ``id``, ``data``,
    ``retry`` and comments)."""

    event: str = "message"
    ident: str | None = None
    data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> tuple[str, str | None, str] | None:
        """One line (without its newline); a complete message as (event, id, data) at a blank line."""
        if line == "":
            if not self.data:
                self.event, self.ident = "message", None
                return None
            out = (self.event, self.ident, "\n".join(self.data))
            self.event, self.ident, self.data = "message", None, []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "id":
            self.ident = value
        elif name == "data":
            self.data.append(value)
        return None
