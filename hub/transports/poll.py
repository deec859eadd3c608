"""``GET /api/v1/poll?channels=…&cursor=…&timeout=…``: long-poll for clients that can only poll.

Answers at once when events after the cursor exist; otherwise waits up to ``timeout`` seconds for
the first one (and any that arrive in the same instant). The reply holds the events and the next
cursor; without a cursor the poll starts from now. A cursor that cannot be resumed gets 410 with the
problem code ``resync_required`` and the snapshot to start again from.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from hub.errors import ApiError
from hub.keys import CONNECTIONS, ENGINE, METRICS, SETTINGS
from hub.realtime import first_snapshot_url, realtime_principal
from hub.responses import dumps
from hub.transports.sse import parse_channels, parse_since
from hub.validation import query_int
from sync.broker import Position, PositionExpired
from sync.channels import Channel
from sync.cursor import format_position
from sync.events import Event

routes = web.RouteTableDef()


class ResyncRequired(ApiError):
    status, code, title = 410, "resync_required", "Resync required"


class PollCollector:
    def __init__(self, max_events: int) -> None:
        self.events: list[tuple[Event, Channel]] = []
        self.max_events = max_events
        self.arrived = asyncio.Event()
        self.resync_reason: str | None = None
        self.full_at: Position | None = None  # set once an event had to be left for the next poll

    def deliver(self, event: Event, channel: Channel) -> None:
        if self.full_at is not None:
            return
        if len(self.events) < self.max_events:
            self.events.append((event, channel))
            self.arrived.set()
        else:
            self.full_at = self.events[-1][0].publication.position

    def resync(self, reason: str, current: Position, channels: tuple[Channel, ...]) -> None:
        self.resync_reason = reason
        self.arrived.set()


@routes.get("/api/v1/poll", name="poll")
async def poll(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    channels = await parse_channels(request, await realtime_principal(request))
    since = parse_since(request.query.get("cursor"))
    timeout = query_int(request, "timeout", 25, 0, int(settings.poll_max_timeout_seconds))
    engine = request.app[ENGINE]
    metrics = request.app[METRICS]
    collector = PollCollector(settings.poll_max_events)
    feed = engine.feed(channels, collector)
    try:
        await feed.start(since)
    except PositionExpired as exc:
        metrics.resyncs.labels("poll", "position_expired").inc()
        raise ResyncRequired(
            "the cursor is older than the stream's retention or from another epoch:"
            " start again from the snapshot",
            position=format_position(exc.current) if exc.current else None,
            snapshot=first_snapshot_url(channels),
        ) from exc
    connections = request.app[CONNECTIONS]
    connections.add(collector, _waker(collector))
    metrics.connections.labels("poll", engine.region).inc()
    try:
        feed.go_live()
        if not collector.events and collector.resync_reason is None and not connections.draining:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(collector.arrived.wait(), timeout)
            await asyncio.sleep(0)  # let events published in the same instant join this reply
    finally:
        feed.close()
        connections.discard(collector)
        metrics.connections.labels("poll", engine.region).dec()
    if collector.resync_reason is not None:
        metrics.resyncs.labels("poll", collector.resync_reason).inc()
        lost = {
            "gap": "events of the stream were lost on the way to this node",
            "epoch_changed": "the stream was lost and recreated",
        }.get(collector.resync_reason, "the stream cannot be resumed")
        raise ResyncRequired(
            f"{lost}: start again from the snapshot",
            reason=collector.resync_reason,
            position=format_position(feed.position) if feed.position else None,
            snapshot=first_snapshot_url(channels),
        )
    # The cursor covers every publication the feed saw, including the ones no channel matched, unless
    # the reply was full: then it stops at the last event in the reply and the next poll goes on from there.
    cursor = collector.full_at or feed.cursor()
    body = {
        "events": [event.as_dict(channel.name) for event, channel in collector.events],
        "cursor": format_position(cursor) if cursor else None,
    }
    payload = dumps(body)
    metrics.messages_sent.labels("poll").inc(len(collector.events))
    metrics.bytes_sent.labels("poll").inc(len(payload))
    return web.Response(body=payload, content_type="application/json")


def _waker(collector: PollCollector):  # type: ignore[no-untyped-def]
    async def wake() -> None:
        collector.arrived.set()

    return wake
