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
from sync.channels import (
    Access,
    Channel,
    ChannelError,
    ChannelKind,
    inventory_stream,
    parts_streams,
    reviews_stream,
    user_streams,
)
from sync.events import Event

log = logging.getLogger(__name__)
HISTORY_PAGE = 1000
# Events of the latest publications per stream, kept so that clients resuming after a drop share
# their encoded frames instead of encoding the same replay once each: at 10,000 clients reconnecting
# together, that encoding was a tenth of the hub's CPU.
RECENT_EVENTS = 4096
# A user stream's events have one or two subscribers each (a user's devices): a replay seldom reuses
# another's, and each kept Event is a few objects the cycle collector scans at every full collection.
RECENT_PRIVATE_EVENTS = 64


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
    __slots__ = (
        "_pending",
        "_replay",
        "channels",
        "engine",
        "keyed",
        "position",
        "sink",
        "state",
        "stream",
    )

    def __init__(self, engine: SyncEngine, stream: str, channels: Sequence[Channel], sink: Sink) -> None:
        self.engine = engine
        self.stream = stream
        self.channels = tuple(channels)
        self.sink = sink
        # The routes of its channels when every channel names a key (a product, a cart, a user): the
        # engine then offers it only the events of those keys. None: it follows a whole stream.
        routes = [channel.route for channel in self.channels]
        self.keyed: tuple[str, ...] | None = (
            None if any(route is None for route in routes) else tuple(r for r in routes if r is not None)
        )
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
            # _dispatch's common case written out — the next offset of the same epoch (any later one for
            # a keyed feed), to the first channel that matches — as this runs once per connection per event.
            position = event.publication.position
            current = self.position
            if current is not None and not (
                position.epoch == current.epoch
                and (
                    position.offset == current.offset + 1
                    or (self.keyed is not None and position.offset > current.offset)
                )
            ):
                self._dispatch(event)
                return
            self.position = position
            route = event.route
            for channel in self.channels:
                if channel.route is None or channel.route == route:
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
            elif position.offset > current.offset + 1 and self.keyed is None:
                # Offsets are contiguous: publications were lost on the way (e.g. trimmed while this
                # node's reader was cut off from the broker). (A keyed feed sees only its keys' events:
                # the engine watches the whole stream for it, see SyncEngine._on_publication.)
                self.position = position
                self.sink.resync("gap", position, self.channels)
        self.position = position
        route = event.route
        for channel in self.channels:
            if channel.route is None or channel.route == route:
                self.sink.deliver(event, channel)
                return

    def cursor(self) -> Position | None:
        """Where the client stands. A live keyed feed stands at the newest position the engine has read
        of its stream: every event of its keys up to there has been offered to it."""
        position = self.position
        if self.keyed is not None and self.state is FeedState.LIVE and position is not None:
            top = self.engine.top_seen(self.stream)
            if top is not None and top.epoch == position.epoch and top.offset > position.offset:
                return top
        return position

    def lost(self, reason: str, position: Position) -> None:
        """The engine saw the stream jump (``reason``: "gap" or "epoch_changed") at ``position``: this
        keyed feed may have missed events of its keys in between."""
        if self.state is FeedState.CLOSED:
            return
        # Just before ``position``: the publication that showed the jump is still offered next.
        self.position = Position(position.epoch, position.offset - 1)
        self.sink.resync(reason, position, self.channels)

    def close(self) -> None:
        if self.state is not FeedState.CLOSED:
            self.state = FeedState.CLOSED
            self._replay = self._pending = None
            self.engine._detach(self)


class SyncEngine:
    """Reads the streams of one region from the broker and offers every publication to the feeds that
    follow it: the feeds of the whole stream, and the keyed feeds of the publication's key only — a cart
    event costs its own subscribers, not every connection of the stream."""

    def __init__(
        self, broker: Broker, region: str, *, on_event: Callable[[Event], None] | None = None
    ) -> None:
        self.broker = broker
        self.region = region
        self._feeds: dict[str, dict[Feed, None]] = {}  # stream → the feeds of the whole stream
        self._keyed: dict[str, dict[str, dict[Feed, None]]] = {}  # stream → route → keyed feeds
        self._last: dict[str, Position] = {}  # stream → the newest position read
        self._unsubscribe: list[Callable[[], None]] = []
        self._on_event = on_event
        self._recent: dict[str, dict[Position, Event]] = {}

    @property
    def streams(self) -> list[str]:
        return [
            inventory_stream(self.region),
            reviews_stream(self.region),
            *user_streams(self.region),
            *parts_streams(self.region),
        ]

    async def start(self) -> None:
        for stream in self.streams:
            self._feeds.setdefault(stream, {})
            self._keyed.setdefault(stream, {})
            self._unsubscribe.append(self.broker.subscribe(stream, self._on_publication))

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        for feed in self._all_feeds():
            feed.close()

    def _all_feeds(self) -> list[Feed]:
        feeds = [feed for by_stream in self._feeds.values() for feed in by_stream]
        for routes in self._keyed.values():
            for by_route in routes.values():
                feeds.extend(feed for feed in by_route if feed.keyed is not None)
        return list(dict.fromkeys(feeds))

    def check_channel(self, channel: Channel) -> None:
        if channel.region != self.region:
            raise ChannelError(
                "channel_not_served",
                f"this node serves region {self.region!r}; connect to a node of {channel.region!r}",
            )

    def feed(self, channels: Sequence[Channel], sink: Sink) -> Feed:
        """A new feed over the channels: all of this node's region, and of one stream (inventory channels
        of the region, or one user's channels)."""
        self.feed_check(channels)
        return Feed(self, channels[0].stream, channels, sink)

    def feed_check(self, channels: Sequence[Channel]) -> None:
        """ChannelError unless one feed can follow ``channels`` (see :meth:`feed`)."""
        if not channels:
            raise ChannelError("invalid_channel", "follow at least one channel")
        for channel in channels:
            self.check_channel(channel)
        stream = channels[0].stream
        if any(channel.stream != stream for channel in channels):
            raise ChannelError(
                "channels_span_streams",
                "one feed follows one stream: inventory channels of a region, or one user's user: and"
                " cart: channels; open another for the rest",
            )

    def feed_count(self) -> int:
        return len(self._all_feeds())

    def top_seen(self, stream: str) -> Position | None:
        """The newest position this node has read from ``stream`` (None before the first)."""
        return self._last.get(stream)

    def follows(self, stream: str, route: str) -> bool:
        """Whether a client on this node follows ``route`` (``user:{sub}``, ``cart:{id}``…) of ``stream``."""
        return bool(self._keyed.get(stream, {}).get(route))

    def followed_keys(self, kind: ChannelKind) -> list[str]:
        """The keys of ``kind`` some client on this node follows (the users of ``user:`` channels…)."""
        prefix = f"{kind.name}:"
        routes = (route for by_route in self._keyed.values() for route in by_route)
        return [route[len(prefix) :] for route in routes if route.startswith(prefix)]

    def _attach(self, feed: Feed) -> None:
        if feed.keyed is None:
            self._feeds.setdefault(feed.stream, {})[feed] = None
            return
        routes = self._keyed.setdefault(feed.stream, {})
        for route in feed.keyed:
            routes.setdefault(route, {})[feed] = None

    def _detach(self, feed: Feed) -> None:
        if feed.keyed is None:
            self._feeds.get(feed.stream, {}).pop(feed, None)
            return
        routes = self._keyed.get(feed.stream, {})
        for route in feed.keyed:
            by_route = routes.get(route)
            if by_route is not None:
                by_route.pop(feed, None)
                if not by_route:
                    del routes[route]

    def _on_publication(self, publication: Publication) -> None:
        try:
            event = Event(publication)
        except (ChannelError, ValueError):
            log.warning("dropped a publication of %s that names no channel", publication.stream)
            return
        stream = publication.stream
        position = publication.position
        last = self._last.get(stream)
        if last is None or position.epoch != last.epoch or position.offset > last.offset:
            self._last[stream] = position
            if last is not None and (position.epoch != last.epoch or position.offset > last.offset + 1):
                # Keyed feeds see only their keys' offsets, so a jump of the stream is told them here.
                reason = "epoch_changed" if position.epoch != last.epoch else "gap"
                routes = self._keyed.get(stream, {}).values()
                for feed in dict.fromkeys(feed for by_route in routes for feed in by_route):
                    feed.lost(reason, position)
        recent = self._recent.setdefault(stream, {})
        recent[position] = event
        if len(recent) > (RECENT_EVENTS if event.kind.access is Access.PUBLIC else RECENT_PRIVATE_EVENTS):
            del recent[next(iter(recent))]
        if self._on_event is not None:
            self._on_event(event)
        for feed in list(self._feeds.get(stream, ())):
            feed.offer(event)
        keyed = self._keyed.get(stream)
        if keyed:
            routed = keyed.get(event.route)
            if routed:
                for feed in list(routed):
                    feed.offer(event)


__all__ = ["Feed", "FeedState", "PositionExpired", "Sink", "SyncEngine"]
