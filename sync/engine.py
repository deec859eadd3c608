"""The sync engine: one node's fan-out from its broker streams to the feeds of connected clients.

A :class:`Feed` is one client's resumable view of a stream: the channels it follows there and the
last position it has seen. Starting a feed from a position replays what the client missed and then
continues live **without a gap and without a duplicate**: the feed takes the live stream first (into a
buffer), reads the history, and then releases the buffer, dropping what the history already covered.
A position the broker can no longer resume raises :class:`~sync.broker.PositionExpired`; the transport
then tells the client to resync from the REST snapshot, never feeding it a partial replay.

Feeds never block the engine: :meth:`Sink.deliver` must return at once (transports keep a bounded
buffer per connection and disconnect a client that falls too far behind).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from sync.broker import Broker, Position, PositionExpired, Publication
from sync.channels import Channel, ChannelError, inventory_stream
from sync.events import Event

log = logging.getLogger(__name__)
HISTORY_PAGE = 1000
# Events of the latest publications per stream, kept so that clients resuming after a drop share
# their encoded frames instead of encoding the same replay once each: at 10,000 clients reconnecting
# together, that encoding was a tenth of the hub's CPU.
RECENT_EVENTS = 4096


class Sink(Protocol):
    """The transport side of a feed."""

    def deliver(self, event: Event, channel: Channel) -> None: ...
    def resync(self, reason: str, current: Position, channels: tuple[Channel, ...]) -> None:
        """The feed saw a gap it cannot fill (the stream's epoch changed, or offsets jumped): the
        client must resync those channels from a snapshot."""
        ...


class FeedState(enum.Enum):
    NEW = "new"
    BUFFERING = "buffering"  # attached to the live stream, replaying history
    LIVE = "live"
    CLOSED = "closed"


_LIVE = FeedState.LIVE  # (a module global is found faster than an enum member: see Feed.offer)


class Feed:
    # One per subscribed connection: slots and no lists while live keep an idle subscriber small.
    __slots__ = ("_pending", "_replay", "channels", "engine", "position", "sink", "state", "stream")

    def __init__(self, engine: SyncEngine, stream: str, channels: Sequence[Channel], sink: Sink) -> None:
        self.engine = engine
        self.stream = stream
        self.channels = tuple(channels)
        self.sink = sink
        self.state = FeedState.NEW
        self.position: Position | None = None  # last publication seen, delivered or filtered out
        self._replay: list[Event] | None = None  # what the history read, until go_live
        self._pending: list[Event] | None = None  # what arrived live meanwhile

    async def start(self, since: Position | None) -> Position:
        """Attach to the live stream and read what came after ``since`` (None: from now).

        Returns the position the client stands at — ``since``, or the stream's top — and delivers
        nothing yet: the transport acknowledges first, then :meth:`go_live` sends the missed events and
        continues live. (An SSE ``ready`` id, say, must never run ahead of events still to come.)"""
        if self.state is not FeedState.NEW:
            raise RuntimeError(f"a feed starts once, this one is {self.state.value}")
        self.state = FeedState.BUFFERING
        self.engine._attach(self)
        try:
            self._pending = []
            if since is None:
                self.position = await self.engine.broker.top(self.stream)
            else:
                self.position = since
                self._replay = await self._read_history(since)
        except BaseException:
            self.close()
            raise
        return self.position

    async def _read_history(self, since: Position) -> list[Event]:
        events: list[Event] = []
        cursor = since
        while True:
            page = await self.engine.broker.history(self.stream, cursor, HISTORY_PAGE)
            recent = self.engine._recent.get(self.stream, {})
            events.extend(recent.get(p.position) or Event(p) for p in page)
            if len(page) < HISTORY_PAGE:
                return events
            cursor = page[-1].position

    def go_live(self) -> None:
        """Deliver the missed events, then what arrived live meanwhile (minus the overlap), then live."""
        if self.state is not FeedState.BUFFERING:
            return
        backlog = (self._replay or []) + (self._pending or [])
        self._replay, self._pending = None, []
        for event in backlog:
            self._dispatch(event)
        # Events that arrive during the loop above are buffered by offer() and delivered here.
        while self._pending:
            more, self._pending = self._pending, []
            for event in more:
                self._dispatch(event)
        self._pending = None
        self.state = FeedState.LIVE

    def offer(self, event: Event) -> None:
        if self.state is _LIVE:
            # _dispatch's common case written out — the next offset of the same epoch, to the first
            # channel that matches — as this runs once per connection per event.
            position = event.publication.position
            current = self.position
            if current is not None and (
                position.offset != current.offset + 1 or position.epoch != current.epoch
            ):
                self._dispatch(event)
                return
            self.position = position
            product_id = event.product_id
            for channel in self.channels:
                if channel.product_id is None or channel.product_id == product_id:
                    self.sink.deliver(event, channel)
                    return
        elif self.state is FeedState.BUFFERING and self._pending is not None:
            self._pending.append(event)

    def _dispatch(self, event: Event) -> None:
        position = event.publication.position
        current = self.position
        if current is not None:
            if position.epoch != current.epoch:
                # The stream was lost and recreated: what happened in between is unknown here.
                self.position = position
                self.sink.resync("epoch_changed", position, self.channels)
            elif position.offset <= current.offset:
                return  # already replayed from history
            elif position.offset > current.offset + 1:
                # Offsets are contiguous: publications were lost on the way (e.g. trimmed while this
                # node's reader was cut off from the broker).
                self.position = position
                self.sink.resync("gap", position, self.channels)
        self.position = position
        for channel in self.channels:
            if channel.matches(event.product_id):
                self.sink.deliver(event, channel)
                return

    def close(self) -> None:
        if self.state is not FeedState.CLOSED:
            self.state = FeedState.CLOSED
            self._replay = self._pending = None
            self.engine._detach(self)


class SyncEngine:
    """Reads the streams of one region from the broker and offers every publication to the feeds."""

    def __init__(
        self, broker: Broker, region: str, *, on_event: Callable[[Event], None] | None = None
    ) -> None:
        self.broker = broker
        self.region = region
        self._feeds: dict[str, dict[Feed, None]] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self._on_event = on_event
        self._recent: dict[str, dict[Position, Event]] = {}

    @property
    def streams(self) -> list[str]:
        return [inventory_stream(self.region)]

    async def start(self) -> None:
        for stream in self.streams:
            self._feeds.setdefault(stream, {})
            self._unsubscribe.append(self.broker.subscribe(stream, self._on_publication))

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        for feeds in self._feeds.values():
            for feed in list(feeds):
                feed.close()

    def check_channel(self, channel: Channel) -> None:
        if channel.region != self.region:
            raise ChannelError(
                "channel_not_served",
                f"this node serves region {self.region!r}; connect to a node of {channel.region!r}",
            )

    def feed(self, channels: Sequence[Channel], sink: Sink) -> Feed:
        """A new feed over the channels (all of this node's region, hence one stream)."""
        if not channels:
            raise ChannelError("invalid_channel", "follow at least one channel")
        for channel in channels:
            self.check_channel(channel)
        return Feed(self, channels[0].stream, channels, sink)

    def feed_count(self) -> int:
        return sum(len(feeds) for feeds in self._feeds.values())

    def _attach(self, feed: Feed) -> None:
        self._feeds.setdefault(feed.stream, {})[feed] = None

    def _detach(self, feed: Feed) -> None:
        self._feeds.get(feed.stream, {}).pop(feed, None)

    def _on_publication(self, publication: Publication) -> None:
        event = Event(publication)
        recent = self._recent.setdefault(publication.stream, {})
        recent[publication.position] = event
        if len(recent) > RECENT_EVENTS:
            del recent[next(iter(recent))]
        if self._on_event is not None:
            self._on_event(event)
        for feed in list(self._feeds.get(publication.stream, ())):
            feed.offer(event)


__all__ = ["Feed", "FeedState", "PositionExpired", "Sink", "SyncEngine"]
