"""``/api/v1/sse?channels=inventory:eu,…``: Server-Sent Events.

Each event's ``id:`` is its position, so a reconnecting EventSource resumes by itself through the
``Last-Event-ID`` header (or ``last_event_id`` in the query, for clients that cannot set headers).
The stream opens with ``retry:`` and a ``ready`` event carrying the current position, sends a comment
as heartbeat, and ends with a ``resync`` event when the position cannot be resumed, with ``close`` when
the node shuts down (``going_away``) or the client fell too far behind (``slow_consumer``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import orjson
from aiohttp import web

from hub.errors import BadRequest
from hub.keys import CONNECTIONS, ENGINE, METRICS, SETTINGS, WRITES
from hub.realtime import ConnectionState, realtime_principal, resync_message, shared_channel
from hub.transports.writes import TurnQueue
from sync.broker import Position, PositionExpired
from sync.channels import Channel, ChannelError
from sync.cursor import CursorError, format_position, parse_position
from sync.engine import Feed
from sync.events import Event, http_chunk

routes = web.RouteTableDef()
MAX_CHANNELS = 20


def parse_channels(request: web.Request) -> list[Channel]:
    raw = request.query.get("channels", "")
    names = [n for n in raw.split(",") if n]
    if not names or len(names) > MAX_CHANNELS:
        raise BadRequest(
            f"channels names 1 to {MAX_CHANNELS} channels, comma-separated", code="invalid_channel"
        )
    engine = request.app[ENGINE]
    channels = []
    try:
        for name in dict.fromkeys(names):
            channel, _ = shared_channel(name)
            engine.check_channel(channel)
            channels.append(channel)
    except ChannelError as exc:
        raise BadRequest(exc.message, code=exc.code) from exc
    return channels


def parse_since(text: str | None) -> Position | None:
    if not text:
        return None
    try:
        return parse_position(text)
    except CursorError as exc:
        raise BadRequest(str(exc), code="invalid_position") from exc


def _sse(event: str, data: object, ident: str | None = None) -> bytes:
    head = f"id: {ident}\n".encode() if ident else b""
    return head + f"event: {event}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


_HEARTBEAT = http_chunk(b": heartbeat\n\n")
_GOING_AWAY = http_chunk(_sse("close", {"code": "going_away", "reconnect": True}))
_SLOW_CONSUMER = http_chunk(_sse("close", {"code": "slow_consumer", "reconnect": True}))
_STALLED_PEER_SECONDS = 2.0  # how long a stream that ended may take to leave before its socket is aborted


class SseConnection(TurnQueue):
    """One event stream, once opened: what is queued for it, and how it ends.

    Like a WebSocket (:class:`~hub.transports.websocket.WsConnection`), it writes whole pre-framed
    HTTP chunks (each event's, shared by every stream of a fan-out: :meth:`Event.sse_chunk`) straight to
    the transport, all of one turn in one write, through the app's
    :class:`~hub.transports.writes.WriteBatcher`; nothing waits on a slow reader. A client whose
    backlog in the transport passes ``send_buffer_messages`` or ``send_buffer_bytes`` is cut off: its
    stream ends with ``event: close`` (``slow_consumer``) and it resumes from its ``Last-Event-ID``.

    No task or timer of its own: :meth:`run` awaits :attr:`done`, and the node's heartbeat tick
    (:meth:`beat`) writes the heartbeat comments and notices a client that went away.
    """

    __slots__ = (
        "_connections",
        "_heartbeat",
        "_quiet_since",
        "_transport",
        "_wrote",
        "done",
        "feed",
        "meter",
        "metrics",
        "region",
        "state",
    )

    def __init__(self, request: web.Request) -> None:
        app = request.app
        settings = app[SETTINGS]
        metrics = self.metrics = app[METRICS]
        loop = asyncio.get_running_loop()
        self.region = settings.region
        self.state = ConnectionState.OPEN
        self.done: asyncio.Future[bytes | None] = loop.create_future()  # the chunk that ends the stream
        self.feed: Feed | None = None
        self._connections = app[CONNECTIONS]
        writes = app[WRITES]
        self.meter = writes.meter(
            metrics.messages_sent.labels("sse"),
            metrics.bytes_sent.labels("sse"),
            metrics.delivery_latency.labels("sse"),
        )
        self._transport = request.transport
        self._init_queue(writes, settings.send_buffer_messages, settings.send_buffer_bytes)
        self._heartbeat = settings.sse_heartbeat_seconds
        self._quiet_since = loop.time()
        self._wrote = False

    # -- outgoing ----------------------------------------------------------------------------------
    def deliver(self, event: Event, channel: Channel) -> None:
        self._queue(event.sse_chunk(channel.name), event.ts)

    def resync(self, reason: str, current: Position, channels: tuple[Channel, ...]) -> None:
        self.metrics.resyncs.labels("sse", reason).inc()
        message = resync_message(",".join(c.name for c in channels), self.region, reason, current)
        self._queue(http_chunk(_sse("resync", message)), None)

    def _queue(self, chunk: bytes, ts: float | None) -> None:
        if self.state is ConnectionState.OPEN:
            self._enqueue(chunk, ts)

    def flush(self) -> tuple[int, int, float | None]:
        """Write what was queued this turn in one write (called by the batcher)."""
        taken = self._take()
        if taken is None or self.state is not ConnectionState.OPEN:
            return 0, 0, None
        transport = self._transport
        if transport is None or transport.is_closing():
            self.end()  # the client went away
            return 0, 0, None
        queued, size, ts = taken
        count = self._write_within_limits(transport, queued, size)
        if not count:  # too slow: cut off; it resumes from the last id it received
            self.metrics.slow_consumers.labels("sse").inc()
            self.end(_SLOW_CONSUMER)
            return 0, 0, None
        self._wrote = True
        return count, size, ts

    def beat(self, now: float) -> None:
        """The node's heartbeat tick: a comment after ``sse_heartbeat_seconds`` without a write, and the
        end of a stream whose client went away (noticed within a tick, not at the next write)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            self.end()
        elif self._wrote:
            self._wrote = False
            self._quiet_since = now
        elif now - self._quiet_since >= self._heartbeat and self._queued is None:
            if self.state is ConnectionState.OPEN:
                transport.write(_HEARTBEAT)
            self._quiet_since = now

    # -- ending ------------------------------------------------------------------------------------
    def end(self, last: bytes | None = None) -> None:
        """Stop writing; :meth:`run` then writes ``last`` (a chunk) and the stream ends. The client
        reconnects with Last-Event-ID."""
        if self.state is ConnectionState.OPEN:
            self.state = self.state.to(ConnectionState.CLOSING)
            if not self.done.done():
                self.done.set_result(last)

    async def go_away(self) -> None:
        """Shutdown: what is queued leaves first, then ``event: close`` (going away)."""
        if self.state is ConnectionState.OPEN:
            count, size, ts = self.flush()
            if count:
                self.meter.add(count, size, ts)
                self.meter.commit()
            self.end(_GOING_AWAY)

    async def run(self, response: web.StreamResponse) -> None:
        """Until the stream ends; then its closing chunk, if any, and the empty chunk that ends the body
        (aiohttp's own ``write_eof``: this is the response's, see :class:`_EventStream`)."""
        try:
            last = await self.done
            transport = self._transport
            if last is not None and transport is not None and not transport.is_closing():
                transport.write(last)
                # Not kept alive after the stream; a peer that does not take what is left within a few
                # seconds (it stopped reading) is let go of.
                response.force_close()
                if transport.get_write_buffer_size():
                    asyncio.get_running_loop().call_later(_STALLED_PEER_SECONDS, transport.abort)
        finally:
            self.release()
        await web.StreamResponse.write_eof(response)

    def release(self) -> None:
        """Nothing more is written (anything queued is dropped); the feed and the registration go."""
        if self.state is ConnectionState.CLOSED:
            return
        self.state = ConnectionState.CLOSED
        self._transport = None
        self._drop_queue()
        if self.feed is not None:
            self.feed.close()
        self._connections.discard(self)
        self.metrics.connections.labels("sse", self.region).dec()
        self.metrics.subscriptions.labels("sse").dec()


class _EventStream(web.StreamResponse):
    """The stream's response. aiohttp finishes a response by awaiting its ``write_eof`` once the handler
    *and the middlewares around it* have returned: the stream runs there (:meth:`SseConnection.run`,
    which ends with aiohttp's own ``write_eof``), so that an open stream keeps no handler or middleware
    coroutine alive (≈ 1.5 KB per connection)."""

    connection: SseConnection | None = None

    def write_eof(self, data: bytes = b"") -> Coroutine[Any, Any, None]:
        connection, self.connection = self.connection, None
        return super().write_eof(data) if connection is None else connection.run(self)


@routes.get("/api/v1/sse", name="sse")
async def sse(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    realtime_principal(request)
    channels = parse_channels(request)
    since = parse_since(request.headers.get("Last-Event-ID") or request.query.get("last_event_id"))
    engine = request.app[ENGINE]
    metrics = request.app[METRICS]
    response = _EventStream(headers=_HEADERS)
    connection = SseConnection(request)
    feed = engine.feed(channels, connection)
    try:
        position = await feed.start(since)
    except PositionExpired as exc:
        metrics.resyncs.labels("sse", "position_expired").inc()
        await response.prepare(request)
        await response.write(f"retry: {settings.sse_retry_ms}\n\n".encode())
        await response.write(
            _sse("resync", resync_message(channels[0].name, engine.region, "position_expired", exc.current))
        )
        return response
    connection.feed = feed
    metrics.connections.labels("sse", connection.region).inc()
    metrics.subscriptions.labels("sse").inc()
    try:
        await response.prepare(request)
        # The opening goes through aiohttp (with the headers, as the body's first chunk); the events
        # are chunks of our own, written straight to the transport.
        ready = {"position": format_position(position), "channels": [c.name for c in channels]}
        await response.write(
            f"retry: {settings.sse_retry_ms}\n\n".encode() + _sse("ready", ready, format_position(position))
        )
        # aiohttp's keep-alive timer guards a connection waiting for its next request: not this one.
        request.protocol.keep_alive(False)
        request.app[CONNECTIONS].watch(connection, settings.sse_heartbeat_seconds)
        feed.go_live()
    except BaseException:
        connection.release()
        raise
    response.connection = connection
    return response


_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
