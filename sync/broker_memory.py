"""The in-process broker: the embedded default for a single node.

Each stream is a ring buffer of its newest ``max_len`` publications. The epoch is drawn at random
when the broker starts, so every restart of the process is a new epoch and positions handed out by
the previous process are reported as expired rather than trusted.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Sequence

from sync.broker import (
    Handler,
    Position,
    PositionExpired,
    Publication,
    PublishIncomplete,
    PublishItem,
    deliver,
)


class _Stream:
    __slots__ = ("handlers", "offset", "tail", "versions")

    def __init__(self, max_len: int) -> None:
        # The payloads alone (the newest's offset is ``offset``): bytes are no work for the cycle
        # collector, where a Publication and its Position are two objects it scans at every full
        # collection — 200,000 of them per stream at the hub's default retention.
        self.tail: deque[bytes] = deque(maxlen=max_len)
        self.offset = 0
        self.handlers: list[Handler] = []
        self.versions: dict[str, int] = {}


class MemoryBroker:
    def __init__(self, max_len: int = 10_000, epoch: str | None = None) -> None:
        self.epoch = epoch or secrets.token_hex(4)
        self._max_len = max_len
        self._streams: dict[str, _Stream] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._streams.clear()

    def _stream(self, name: str) -> _Stream:
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = _Stream(self._max_len)
        return stream

    async def publish(
        self, stream: str, data: bytes, *, dedupe: tuple[str, int] | None = None
    ) -> Position | None:
        s = self._stream(stream)
        if dedupe is not None:
            key, version = dedupe
            if version <= max(0, s.versions.get(key, 0)):
                return None
            s.versions[key] = version
        s.offset += 1
        publication = Publication(stream, Position(self.epoch, s.offset), data)
        s.tail.append(data)
        deliver(s.handlers, publication)
        return publication.position

    async def publish_many(self, items: Sequence[PublishItem]) -> list[Position | None]:
        published: list[Position | None] = []
        for stream, data, dedupe in items:
            try:
                published.append(await self.publish(stream, data, dedupe=dedupe))
            except Exception as exc:
                raise PublishIncomplete(published, exc) from exc
        return published

    async def top(self, stream: str) -> Position:
        return Position(self.epoch, self._stream(stream).offset)

    async def history(self, stream: str, since: Position, limit: int = 10_000) -> list[Publication]:
        s = self._stream(stream)
        current = Position(self.epoch, s.offset)
        if since.epoch != self.epoch or since.offset > s.offset:
            raise PositionExpired(stream, since, current)
        oldest = s.offset - len(s.tail) + 1
        if since.offset < oldest - 1:
            raise PositionExpired(stream, since, current)
        start = since.offset - oldest + 1
        tail, epoch = s.tail, self.epoch
        return [
            Publication(stream, Position(epoch, oldest + i), tail[i])
            for i in range(start, min(len(tail), start + limit))
        ]

    def subscribe(self, stream: str, handler: Handler) -> Callable[[], None]:
        handlers = self._stream(stream).handlers
        handlers.append(handler)

        def unsubscribe() -> None:
            if handler in handlers:
                handlers.remove(handler)

        return unsubscribe
