"""A publication as clients receive it, encoded at most once per wire format and channel.

The broker's payload is already JSON, so the JSON envelope is assembled from bytes around it instead of
re-serialising the data: one fan-out to 10,000 WebSockets encodes each event once, not 10,000 times.
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import orjson

from sync.broker import Publication
from sync.cursor import format_position


class Event:
    __slots__ = (
        "_data",
        "_json",
        "_msgpack",
        "_sse",
        "position_text",
        "product_id",
        "publication",
        "received_at",
        "ts",
    )

    def __init__(self, publication: Publication) -> None:
        self.publication = publication
        self.position_text = format_position(publication.position)
        self._data: dict[str, Any] = orjson.loads(publication.data)
        self.product_id: str = str(self._data.get("product_id", ""))
        ts = self._data.get("ts")
        self.ts: float | None = ts / 1e6 if isinstance(ts, int) else None  # when the change committed
        self.received_at = time.time()
        self._json: dict[str, bytes] = {}
        self._msgpack: dict[str, bytes] = {}
        self._sse: dict[str, bytes] = {}

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
                {"type": "event", "channel": channel, "position": self.position_text, "data": self._data}
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
                + b"\nevent: inventory\ndata: "
                + self.json(channel)
                + b"\n\n"
            )
            self._sse[channel] = encoded
        return encoded

    def as_dict(self, channel: str) -> dict[str, Any]:
        return {"type": "event", "channel": channel, "position": self.position_text, "data": self._data}
