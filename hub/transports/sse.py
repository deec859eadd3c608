"""``/api/v1/sse?channels=inventory:eu,…``: Server-Sent Events.

Each event's ``id:`` is its position, so a reconnecting EventSource resumes by itself through the
``Last-Event-ID`` header (or ``last_event_id`` in the query, for clients that cannot set headers).
The stream opens with ``retry:`` and a ``ready`` event carrying the current position, sends a comment
as heartbeat, and ends with a ``resync`` event when the position cannot be resumed, with ``close`` when
the node shuts down (``going_away``) or the client fell too far behind (``slow_consumer``).
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import HttpVersion11, web

from hub.auth import Principal
from hub.browsers import check_origin
from hub.channel_access import resolve_channel
from hub.errors import ApiError, BadRequest, Forbidden, NotFoundError, Unauthenticated
from hub.keys import CONNECTION_CAPS, CONNECTIONS, ENGINE, METRICS, SETTINGS, WRITES
from hub.ratelimit.connections import ConnectionSlot
from hub.realtime import (
    ConnectionState,
    realtime_principal,
    resync_message,
    seconds_until_expiry,
)
from hub.transports.takeover import HandedOver, take_over
from hub.transports.writes import NOTHING, TurnQueue
from sync.broker import Position, PositionExpired
from sync.channels import Channel, ChannelError
from sync.cursor import CursorError, format_position, parse_position
from sync.engine import Feed
from sync.events import Event, http_chunk

routes = web.RouteTableDef()
MAX_CHANNELS = 20


async def parse_channels(request: web.Request, principal: Principal | None) -> list[Channel]:
    """The request's ``channels``, each checked against ``principal`` (hub/channel_access.py): on every
    request, so a resumed stream or poll is checked as a new one is."""
    raw = request.query.get("channels", "")
    names = [n for n in raw.split(",") if n]
    if not names or len(names) > MAX_CHANNELS:
        raise BadRequest(
            f"channels names 1 to {MAX_CHANNELS} channels, comma-separated", code="invalid_channel"
        )
    channels = []
    try:
        for name in dict.fromkeys(names):
            channels.append(await resolve_channel(request.app, principal, name))
        request.app[ENGINE].feed_check(channels)
    except ChannelError as exc:
        raise channel_problem(exc) from exc
    return channels


def channel_problem(exc: ChannelError) -> ApiError:
    """A refused channel as the problem a REST transport answers with."""
    if exc.code == "unauthenticated":
        return Unauthenticated(exc.message, code=exc.code)
    if exc.code == "channel_forbidden":
        return Forbidden(exc.message, code=exc.code)
    if exc.code in ("cart_not_found", "school_not_found"):
        return NotFoundError(exc.message, code=exc.code)
    return BadRequest(exc.message, code=exc.code)


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


_HEARTBEAT_MESSAGE = b": heartbeat\n\n"
_HEARTBEAT = http_chunk(_HEARTBEAT_MESSAGE)
_GOING_AWAY_MESSAGE = _sse("close", {"code": "going_away", "reconnect": True})
_SLOW_CONSUMER = _sse("close", {"code": "slow_consumer", "reconnect": True})
# The stream's token expired: reconnect with a fresh one (its Last-Event-ID resumes the stream).
_TOKEN_EXPIRED = _sse("close", {"code": "token_expired", "reconnect": True})
_LAST_CHUNK = b"0\r\n\r\n"  # ends a chunked body
_STALLED_PEER_SECONDS = 2.0  # how long a stream that ended may take to leave before its socket is aborted


class SseConnection(TurnQueue, asyncio.Protocol):
    """One event stream, once opened — the socket's protocol after the response head
    (:mod:`hub.transports.takeover`): what is queued for it, and how it ends.

    Like a WebSocket (:class:`~hub.transports.websocket.WsConnection`), it writes whole pre-framed
    messages (each event's, shared by every stream of a fan-out: :meth:`Event.sse_chunk`, or
    :meth:`Event.sse` for an HTTP/1.0 client, whose body is not chunked and ends with the connection)
    straight to the transport, all of one turn in one write, through the app's
    :class:`~hub.transports.writes.WriteBatcher`; nothing waits on a slow reader. A client whose
    backlog in the transport passes ``send_buffer_messages`` or ``send_buffer_bytes`` is cut off: its
    stream ends with ``event: close`` (``slow_consumer``) and it resumes from its ``Last-Event-ID``.

    No task or timer of its own: the node's heartbeat tick (:meth:`beat`) writes the heartbeat
    comments; the socket itself tells when the client goes away (:meth:`connection_lost`). The
    client has nothing more to say once the stream is open: what it sends is not read, and the
    connection is not kept alive after the stream (``Connection: close``).
    """

    __slots__ = (
        "_chunked",
        "_closed",
        "_connections",
        "_expires_at",
        "_heartbeat",
        "_quiet_since",
        "_transport",
        "_wrote",
        "cap",
        "feed",
        "meter",
        "metrics",
        "region",
        "state",
    )

    def __init__(
        self,
        app: web.Application,
        transport: asyncio.Transport,
        chunked: bool,
        principal: Principal | None = None,
        cap: ConnectionSlot | None = None,
    ) -> None:
        settings = app[SETTINGS]
        metrics = self.metrics = app[METRICS]
        self.cap = cap  # this stream's place under the node's connection caps
        self.region = settings.region
        self.state = ConnectionState.OPEN
        self.feed: Feed | None = None
        self._connections = app[CONNECTIONS]
        writes = app[WRITES]
        self.meter = writes.meter(
            metrics.messages_sent.labels("sse"),
            metrics.bytes_sent.labels("sse"),
            metrics.delivery_latency.labels("sse"),
        )
        self._transport: asyncio.Transport | None = transport
        self._chunked = chunked
        self._closed: asyncio.Future[None] | None = None  # only while an end waits for the socket to close
        self._init_queue(writes, settings.send_buffer_messages, settings.send_buffer_bytes)
        self._heartbeat = settings.sse_heartbeat_seconds
        now = self._quiet_since = asyncio.get_running_loop().time()
        expires_in = seconds_until_expiry(principal)
        # A stream lives no longer than its token: past it, the stream ends (token_expired), as a
        # WebSocket closes with 4102, and the client comes back with a fresh token.
        self._expires_at = None if expires_in is None else now + expires_in
        self._wrote = False

    def framed(self, message: bytes) -> bytes:
        """``message`` as this stream's body carries it: an HTTP chunk, or as it is (HTTP/1.0)."""
        return http_chunk(message) if self._chunked else message

    # -- outgoing ----------------------------------------------------------------------------------
    def deliver(self, event: Event, channel: Channel) -> None:
        name = channel.name
        self._queue(event.sse_chunk(name) if self._chunked else event.sse(name), event.ts)

    def resync(self, reason: str, current: Position, channels: tuple[Channel, ...]) -> None:
        self.metrics.resyncs.labels("sse", reason).inc()
        self._queue(self.framed(_sse("resync", resync_message(channels, reason, current))), None)

    def _queue(self, chunk: bytes, ts: float | None) -> None:
        if self.state is ConnectionState.OPEN:
            self._enqueue(chunk, ts)

    def flush(self) -> tuple[int, int, float | None]:
        """Write what was queued this turn in one write (called by the batcher)."""
        transport = self._transport
        if self.state is not ConnectionState.OPEN or transport is None or transport.is_closing():
            self._drop_queue()  # (gone: connection_lost releases the stream)
            return NOTHING
        written = self._write_turn(transport)
        if written is None:  # too slow: cut off; it resumes from the last id it received
            self.metrics.slow_consumers.labels("sse").inc()
            self.end(_SLOW_CONSUMER)
            return NOTHING
        if written[0]:
            self._wrote = True
        return written

    def beat(self, now: float) -> None:
        """The node's heartbeat tick: a comment after ``sse_heartbeat_seconds`` without a write; the
        end of the stream once its token expired."""
        if self._expires_at is not None and now >= self._expires_at:
            self.end(_TOKEN_EXPIRED)
            return
        if self._wrote:
            self._wrote = False
            self._quiet_since = now
        elif now - self._quiet_since >= self._heartbeat and self._queued is None:
            transport = self._transport
            if self.state is ConnectionState.OPEN and transport is not None:
                transport.write(_HEARTBEAT if self._chunked else _HEARTBEAT_MESSAGE)
            self._quiet_since = now

    # -- ending ------------------------------------------------------------------------------------
    def end(self, last: bytes | None = None) -> None:
        """Stop writing; write ``last`` (a message, e.g. ``event: close``) and end the body, and close
        the connection. The client reconnects with Last-Event-ID. A peer that does not take what is
        left within a few seconds (it stopped reading) is let go of."""
        if self.state is not ConnectionState.OPEN:
            return
        self.state = self.state.to(ConnectionState.CLOSING)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        tail = (self.framed(last) if last is not None else b"") + (_LAST_CHUNK if self._chunked else b"")
        transport.write(tail)
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(_STALLED_PEER_SECONDS, transport.abort)
        transport.close()

    async def go_away(self) -> None:
        """Shutdown: what is queued leaves first, then ``event: close`` (going away); returns once the
        connection is closed (at most a few seconds: see :meth:`end`)."""
        if self.state is ConnectionState.OPEN:
            count, size, ts = self.flush()
            if count:
                self.meter.add(count, size, ts)
                self.meter.commit()
            self._closed = asyncio.get_running_loop().create_future()
            self.end(_GOING_AWAY_MESSAGE)
        if self._closed is not None and self._transport is not None:
            with contextlib.suppress(TimeoutError):  # (the abort in end() has come by then)
                await asyncio.wait_for(asyncio.shield(self._closed), _STALLED_PEER_SECONDS + 1)

    # -- the socket (asyncio.Protocol) ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        pass  # a client has nothing to say on an open stream (a pipelined request is not answered)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self.release()

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
        if self.cap is not None:
            self.cap.release()
        self.metrics.connections.labels("sse", self.region).dec()
        self.metrics.subscriptions.labels("sse").dec()


@routes.get("/api/v1/sse", name="sse")
async def sse(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    check_origin(request)
    principal = await realtime_principal(request)
    channels = await parse_channels(request, principal)
    since = parse_since(request.headers.get("Last-Event-ID") or request.query.get("last_event_id"))
    if request.method == "HEAD":  # the stream's head, checked as a GET's would be, and no stream
        return web.Response(headers=_HEADERS)
    app = request.app
    engine = app[ENGINE]
    metrics = app[METRICS]
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("the client went away")
    chunked = request.version >= HttpVersion11
    retry = f"retry: {settings.sse_retry_ms}\n\n".encode()
    cap = app[CONNECTION_CAPS].acquire(principal, request.remote)  # before the stream: a plain 429
    connection = SseConnection(app, transport, chunked, principal, cap)
    feed = engine.feed(channels, connection)
    try:
        position = await feed.start(since)
    except PositionExpired as exc:
        cap.release()  # a resync answer, not a stream
        metrics.resyncs.labels("sse", "position_expired").inc()
        response = web.StreamResponse(headers=_HEADERS)
        await response.prepare(request)
        await response.write(retry)
        await response.write(_sse("resync", resync_message(channels, "position_expired", exc.current)))
        return response
    except BaseException:
        cap.release()
        raise
    connection.feed = feed
    metrics.connections.labels("sse", connection.region).inc()
    metrics.subscriptions.labels("sse").inc()
    ready = {"position": format_position(position), "channels": [c.name for c in channels]}
    opening = retry + _sse("ready", ready, format_position(position))
    try:
        take_over(
            request, (_HEAD_CHUNKED if chunked else _HEAD_HTTP10) + connection.framed(opening), connection
        )
        app[CONNECTIONS].watch(connection, settings.sse_heartbeat_seconds)
        feed.go_live()
    except BaseException:
        connection.release()
        raise
    return HandedOver(status=200, headers=_HEADERS)


_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_FIELDS = "".join(f"{name}: {value}\r\n" for name, value in _HEADERS.items()) + "Connection: close\r\n"
_HEAD_CHUNKED = f"HTTP/1.1 200 OK\r\n{_FIELDS}Transfer-Encoding: chunked\r\n\r\n".encode()
_HEAD_HTTP10 = f"HTTP/1.1 200 OK\r\n{_FIELDS}\r\n".encode()
