"""A publication as clients receive it, encoded at most once per wire format and channel.

The broker's payload is already JSON, so the JSON envelope is assembled from bytes around it instead of
re-serialising the data: one fan-out to 10,000 WebSockets encodes each event once, not 10,000 times.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import msgpack
import orjson

from crdt import codec
from sync.broker import Publication
from sync.channels import event_route, route_key
from sync.cursor import format_position


class Event:
    __slots__ = (
        "_data",
        "_json",
        "_msgpack",
        "_sse",
        "_sse_chunks",
        "_ws_binary",
        "_ws_text",
        "key",
        "kind",
        "origin",
        "position_text",
        "publication",
        "received_at",
        "route",
        "ts",
        "type",
    )

    def __init__(self, publication: Publication) -> None:
        self.publication = publication
        self.position_text = format_position(publication.position)
        self._data: dict[str, Any] = orjson.loads(publication.data)
        # Raises ChannelError for data of no known kind (the engine drops such a publication).
        self.kind, self.type, self.key = event_route(publication.stream, self._data)
        self.route = route_key(self.kind, self.key)  # the engine's index of the feeds it goes to
        # The connection a cart delta was pushed on (an opaque token): it is not sent back there, where
        # the push's ack stands for it. None for every other event.
        origin = self._data.get("origin")
        self.origin: str | None = origin if isinstance(origin, str) else None
        ts = self._data.get("ts")
        self.ts: float | None = ts / 1e6 if isinstance(ts, int) else None  # when the change committed
        self.received_at = time.time()
        self._json: dict[str, bytes] = {}
        self._msgpack: dict[str, bytes] = {}
        self._sse: dict[str, bytes] = {}
        self._sse_chunks: dict[str, bytes] = {}
        self._ws_text: dict[str, bytes] = {}
        self._ws_binary: dict[str, bytes] = {}

    @property
    def data(self) -> dict[str, Any]:
        return self._data

    def json(self, channel: str) -> bytes:
        """``{"type":"event","channel":…,"position":…,"data":{…}}`` as UTF-8 JSON."""
        encoded = self._json.get(channel)
        if encoded is None:
            encoded = (
                b'{"type":"event","channel":'
                + orjson.dumps(channel)
                + b',"position":"'
                + self.position_text.encode()
                + b'","data":'
                + self.publication.data
                + b"}"
            )
            self._json[channel] = encoded
        return encoded

    def msgpack(self, channel: str) -> bytes:
        encoded = self._msgpack.get(channel)
        if encoded is None:
            encoded = msgpack.packb(
                {
                    "type": "event",
                    "channel": channel,
                    "position": self.position_text,
                    "data": _binary_data(self._data),
                },
                use_bin_type=True,
            )
            self._msgpack[channel] = encoded
        return encoded

    def sse(self, channel: str) -> bytes:
        """One SSE message: the position is the ``id:`` a reconnecting client sends back."""
        encoded = self._sse.get(channel)
        if encoded is None:
            encoded = (
                b"id: "
                + self.position_text.encode()
                + b"\nevent: "
                + self.kind.sse_event.encode()
                + b"\ndata: "
                + self.json(channel)
                + b"\n\n"
            )
            self._sse[channel] = encoded
        return encoded

    def sse_chunk(self, channel: str) -> bytes:
        """:meth:`sse` as one HTTP/1.1 chunk (size line, message, CRLF): every stream of a fan-out writes
        these same bytes, and a connection's pending chunks concatenate into one write."""
        chunk = self._sse_chunks.get(channel)
        if chunk is None:
            chunk = self._sse_chunks[channel] = http_chunk(self.sse(channel))
        return chunk

    def ws_frame(self, channel: str, binary: bool) -> bytes:
        """The whole WebSocket frame (header included) of :meth:`msgpack` or :meth:`json`: every
        connection of a fan-out writes these same bytes."""
        # Called once per delivery: two dicts by channel, so the lookup builds no key tuple.
        frames = self._ws_binary if binary else self._ws_text
        frame = frames.get(channel)
        if frame is None:
            frame = frames[channel] = websocket_frame(
                self.msgpack(channel) if binary else self.json(channel), binary
            )
        return frame

    def as_dict(self, channel: str) -> dict[str, Any]:
        return {"type": "event", "channel": channel, "position": self.position_text, "data": self._data}


def _binary_data(data: dict[str, Any]) -> dict[str, Any]:
    """An event's data for MessagePack frames: a CRDT in it travels in the codec's binary form (JSON
    frames carry its JSON-safe form, as published)."""
    crdt = data.get("delta")
    if not isinstance(crdt, dict):
        return data
    # The two forms hold the same state — {"t": tag, "v": version, "s": state} and [tag, version,
    # state] — so the binary one is packed from the published one as it is, not decoded and encoded
    # again (a publisher wrote it with the codec). Anything of another shape goes through the codec,
    # which refuses what it cannot read.
    tag, version, state = crdt.get("t"), crdt.get("v"), crdt.get("s")
    if len(crdt) == 3 and type(tag) is str and type(version) is int and state is not None:
        packed = msgpack.packb([tag, version, state], use_bin_type=True)
    else:
        packed = codec.to_msgpack(codec.from_dict(crdt))
    return {**data, "delta": packed}


def http_chunk(data: bytes) -> bytes:
    """``data`` as one chunk of an HTTP/1.1 chunked body (RFC 9112 §7.1); ``data`` must not be empty (an
    empty chunk ends the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def websocket_frame(payload: bytes, binary: bool) -> bytes:
    """A complete, final, unmasked WebSocket data frame (RFC 6455 §5.2: a server never masks)."""
    first = 0x82 if binary else 0x81
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", first, size)
    elif size < 65536:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload
