"""``/api/v1/sse?channels=inventory:eu,…``: Server-Sent Events.

Each event's ``id:`` is its position, so a reconnecting EventSource resumes by itself through the
``Last-Event-ID`` header (or ``last_event_id`` in the query, for clients that cannot set headers).
The stream opens with ``retry:`` and a ``ready`` event carrying the current position, sends a comment
as heartbeat, and ends with a ``resync`` event when the position cannot be resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
from aiohttp import web

from hub.errors import BadRequest
from hub.keys import CONNECTIONS, ENGINE, METRICS, SETTINGS
from hub.realtime import ConnectionState, SendBuffer, realtime_principal, resync_message
from sync.broker import Position, PositionExpired
from sync.channels import Channel, ChannelError, parse_channel
from sync.cursor import CursorError, format_position, parse_position
from sync.events import Event

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
            channel = parse_channel(name)
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


class SseConnection:
    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        settings = request.app[SETTINGS]
        self.request = request
        self.response = response
        self.region = settings.region
        self.metrics = request.app[METRICS]
        self.buffer = SendBuffer(settings.send_buffer_messages, settings.send_buffer_bytes)
        self.state = ConnectionState.OPEN
        self.ending: bytes | None = None

    def deliver(self, event: Event, channel: Channel) -> None:
        payload = event.sse(channel.name)
        if not self.buffer.push(payload, len(payload), event.ts):
            self.metrics.slow_consumers.labels("sse").inc()
            self.end()

    def resync(self, reason: str, current: Position, channels: tuple[Channel, ...]) -> None:
        self.metrics.resyncs.labels("sse", reason).inc()
        message = resync_message(",".join(c.name for c in channels), self.region, reason, current)
        self.buffer.push(_sse("resync", message), 0)

    def end(self, last: bytes | None = None) -> None:
        """Stop after what is queued (and ``last``); the client reconnects with Last-Event-ID."""
        if self.state is ConnectionState.OPEN:
            self.state = self.state.to(ConnectionState.CLOSING)
            self.ending = last
            self.buffer.close()

    async def write_forever(self, heartbeat: float) -> None:
        latency = self.metrics.delivery_latency.labels("sse")
        sent = self.metrics.messages_sent.labels("sse")
        sent_bytes = self.metrics.bytes_sent.labels("sse")
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + heartbeat
        while True:
            try:
                # Wake at least once a second: a client that went away is noticed then, not at the
                # next heartbeat write.
                wait = max(0.0, min(1.0, next_heartbeat - loop.time()))
                batch = await asyncio.wait_for(self.buffer.take(), wait)
            except TimeoutError:
                transport = self.request.transport
                if transport is None or transport.is_closing():
                    return
                if loop.time() >= next_heartbeat:
                    await self.response.write(b": heartbeat\n\n")
                    next_heartbeat = loop.time() + heartbeat
                continue
            if batch:
                # One write for everything pending: SSE messages concatenate.
                await self.response.write(b"".join(payload for payload, _, _ in batch))
                next_heartbeat = loop.time() + heartbeat
                now = time.time()
                for _, _, ts in batch:
                    if ts is not None:
                        latency.observe(max(0.0, now - ts))
                sent.inc(len(batch))
                sent_bytes.inc(sum(size for _, size, _ in batch))
            if self.buffer.closed:
                if self.ending:
                    await self.response.write(self.ending)
                return


@routes.get("/api/v1/sse", name="sse")
async def sse(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    realtime_principal(request)
    channels = parse_channels(request)
    since = parse_since(request.headers.get("Last-Event-ID") or request.query.get("last_event_id"))
    engine = request.app[ENGINE]
    metrics = request.app[METRICS]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    connection = SseConnection(request, response)
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
    connections = request.app[CONNECTIONS]
    connections.add(connection, _ender(connection))
    metrics.connections.labels("sse", engine.region).inc()
    metrics.subscriptions.labels("sse").inc()
    try:
        await response.prepare(request)
        ready = {"position": format_position(position), "channels": [c.name for c in channels]}
        await response.write(
            f"retry: {settings.sse_retry_ms}\n\n".encode() + _sse("ready", ready, format_position(position))
        )
        feed.go_live()
        with contextlib.suppress(ConnectionError):
            await connection.write_forever(settings.sse_heartbeat_seconds)
    finally:
        feed.close()
        connections.discard(connection)
        metrics.connections.labels("sse", engine.region).dec()
        metrics.subscriptions.labels("sse").dec()
    return response


def _ender(connection: SseConnection):  # type: ignore[no-untyped-def]
    async def end() -> None:
        connection.end(_sse("close", {"code": "going_away", "reconnect": True}))

    return end
