"""``/api/v1/ws``: the WebSocket transport.

Subprotocol ``synchub.json`` (default; JSON text frames) or ``synchub.msgpack`` (MessagePack binary
frames). Client messages are objects with a ``type``; each may carry an ``id`` echoed in the reply.

    → {"type": "subscribe", "id": 1, "channel": "inventory:eu", "since": "9f3a1c2b:41"}
    ← {"type": "subscribed", "id": 1, "channel": "inventory:eu", "position": "9f3a1c2b:41"}
    ← {"type": "event", "channel": "inventory:eu", "position": "9f3a1c2b:42", "data": {…}}

A bad message gets ``{"type": "error", "id": …, "code": …, "message": …}`` and the connection carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine
from typing import Any

import msgpack
import orjson
from aiohttp import WSMsgType, web

from hub.keys import CONNECTIONS, ENGINE, METRICS, SETTINGS, WRITES
from hub.realtime import (
    CloseCode,
    ConnectionState,
    realtime_principal,
    resync_message,
    seconds_until_expiry,
    shared_channel,
    snapshot_url,
)
from hub.routes.inventory import snapshot_items
from hub.transports.writes import TurnQueue
from sync.broker import BrokerError, Position, PositionExpired
from sync.channels import Channel, ChannelError
from sync.cursor import CursorError, format_position, parse_position
from sync.engine import Feed
from sync.events import Event, websocket_frame

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

JSON_PROTOCOL = "synchub.json"
MSGPACK_PROTOCOL = "synchub.msgpack"
_HARD_FRAME_LIMIT = 1024 * 1024  # beyond this aiohttp closes with 1009; below it we answer an error
_PROTOCOLS = (JSON_PROTOCOL, MSGPACK_PROTOCOL)
_PING = b"\x89\x00"  # an empty ping frame, whole (a server never masks)
_ENDS = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})
_MESSAGE_FIELDS = {
    "subscribe": {"type", "id", "channel", "since", "recover"},
    "unsubscribe": {"type", "id", "channel"},
    "ping": {"type", "id"},
}


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, request: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request = request  # the decoded message, when there was one: its id is echoed


class WsConnection(TurnQueue):
    """One WebSocket client: its subscriptions (one feed each) and what is queued for it.

    Outgoing frames are queued and written by the app's :class:`~hub.transports.writes.WriteBatcher`,
    all of one turn in one write, straight to the transport (whole frames, so they never interleave
    with aiohttp's own pongs and close frame). Nothing waits on a slow reader: what the kernel does not
    take stays in the transport's buffer, and a client whose backlog there passes
    ``send_buffer_messages`` or ``send_buffer_bytes`` is cut off as a slow consumer (it resumes from
    its last position, possibly on another node).

    No timer or task of its own while idle: the node's heartbeat tick (:meth:`beat`) pings a peer that
    has been silent for ``ws_heartbeat_seconds`` (each connection waits a random half to all of it, so
    that connections opened together are not pinged together), drops one that stays silent for half of
    ``ws_heartbeat_seconds`` again, and closes the connection when its token expires.
    """

    __slots__ = (
        "_busy",
        "_closing",
        "_expires_at",
        "_heard",
        "_heartbeat",
        "_pinged_at",
        "_pong_wait",
        "_quiet_since",
        "_released",
        "_transport",
        "binary",
        "engine",
        "feeds",
        "meter",
        "metrics",
        "request",
        "settings",
        "state",
        "ws",
    )

    def __init__(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        binary: bool,
        expires_in: float | None = None,
    ) -> None:
        settings = request.app[SETTINGS]
        self.request = request
        self.ws = ws
        self.binary = binary
        self.engine = request.app[ENGINE]
        self.metrics = request.app[METRICS]
        self.settings = settings
        self.feeds: dict[str, Feed] = {}
        self.state = ConnectionState.OPEN
        self._closing: asyncio.Task[None] | None = None
        writes = request.app[WRITES]
        self.meter = writes.default_meter
        self._transport = request.transport
        self._init_queue(writes, settings.send_buffer_messages, settings.send_buffer_bytes)
        now = asyncio.get_running_loop().time()
        # Silence before a ping: between half the setting and all of it, so that connections opened
        # together (a reconnect storm, a bench) are not all pinged in the same tick — 19,000 pings and
        # pongs at once held a fan-out back by most of a second.
        self._heartbeat = settings.ws_heartbeat_seconds * (0.5 + random.random() / 2)
        self._pong_wait = settings.ws_heartbeat_seconds / 2
        self._heard = False  # a frame arrived since the last beat
        self._busy = False  # a message is being answered
        self._quiet_since = now
        self._pinged_at: float | None = None
        self._expires_at = None if expires_in is None else now + expires_in
        self._released = False

    # -- outgoing ----------------------------------------------------------------------------------
    def encode(self, message: dict[str, Any]) -> bytes:
        if self.binary:
            packed: bytes = msgpack.packb(message)
            return packed
        return orjson.dumps(message)

    def send(self, message: dict[str, Any]) -> None:
        self._queue(websocket_frame(self.encode(message), self.binary), None)

    def deliver(self, event: Event, channel: Channel) -> None:
        # The event's frame is built once and shared by every connection: no copy, no re-encoding.
        self._queue(event.ws_frame(channel.name, self.binary), event.ts)

    def _queue(self, frame: bytes, ts: float | None) -> None:
        if self.state is ConnectionState.OPEN and self._transport is not None:
            self._enqueue(frame, ts)

    def flush(self) -> tuple[int, int, float | None]:
        """Write what was queued this turn in one write (called by the batcher)."""
        taken = self._take()
        transport = self._transport
        if (
            taken is None
            or self.state is not ConnectionState.OPEN
            or transport is None
            or transport.is_closing()
        ):
            return 0, 0, None
        queued, size, ts = taken
        count = self._write_within_limits(transport, queued, size)
        if not count:  # too slow: cut off; it resumes from the last position it received
            self.metrics.slow_consumers.labels("websocket").inc()
            self.close_soon(CloseCode.SLOW_CONSUMER, "slow consumer: resume from your last position")
            return 0, 0, None
        return count, size, ts

    def resync(self, reason: str, current: Position, channels: tuple[Channel, ...]) -> None:
        self.metrics.resyncs.labels("websocket", reason).inc()
        for channel in channels:
            self.send(resync_message(channel.name, self.engine.region, reason, current))

    def beat(self, now: float) -> None:
        """The node's heartbeat tick (see the class)."""
        if self.state is not ConnectionState.OPEN:
            return
        if self._expires_at is not None and now >= self._expires_at:
            self.close_soon(CloseCode.AUTH_EXPIRED, "token expired: reconnect with a new one")
        elif self._heard or self._busy:
            self._heard = False
            self._quiet_since = now
            self._pinged_at = None
        elif self._pinged_at is None:
            transport = self._transport
            if now - self._quiet_since >= self._heartbeat and transport is not None:
                transport.write(_PING)
                self._pinged_at = now
        elif now - self._pinged_at >= self._pong_wait and self._transport is not None:
            # No pong, nor anything else: the peer is gone (or its network is), and would acknowledge
            # no close frame. Let go of the socket; the receive loop then ends.
            self._transport.abort()

    # -- closing -----------------------------------------------------------------------------------
    async def go_away(self) -> None:
        await self.close(CloseCode.GOING_AWAY, "node going away")

    def close_soon(self, code: CloseCode, reason: str) -> None:
        """Close without sending what is still queued (a slow consumer, an expired token)."""
        if self.state is ConnectionState.OPEN:
            self.state = self.state.to(ConnectionState.CLOSING)
            self._closing = asyncio.create_task(self.close(code, reason))

    async def close(self, code: CloseCode, reason: str) -> None:
        if self.state is ConnectionState.CLOSED:
            return
        if self.state is ConnectionState.OPEN:
            self.flush()  # a graceful close (going away) sends what was queued first
            self.state = self.state.to(ConnectionState.CLOSING)
        for feed in self.feeds.values():
            feed.close()
        try:
            # A stalled peer never acknowledges the close frame: do not wait for it for long.
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()[:120]), timeout=2)
        except (TimeoutError, ConnectionError):
            # abort, not close: close would wait to flush what the peer is not reading.
            if self.request.transport is not None:
                self.request.transport.abort()
        self.state = self.state.to(ConnectionState.CLOSED)

    # -- incoming ----------------------------------------------------------------------------------
    async def _answer(self, frame: Any) -> None:
        decoded: dict[str, Any] = {}
        try:
            decoded = self.decode(frame)
            await self.handle(decoded)
        except ProtocolError as exc:
            echo = _echo(exc.request if isinstance(exc.request, dict) else decoded)
            self.send({"type": "error", "code": exc.code, "message": exc.message, **echo})

    def decode(self, message: Any) -> dict[str, Any]:
        if message.type == WSMsgType.TEXT:
            if self.binary:
                raise ProtocolError(
                    "malformed_frame", "this connection speaks MessagePack: send binary frames"
                )
            raw: bytes | str = message.data
        elif message.type == WSMsgType.BINARY:
            if not self.binary:
                raise ProtocolError("malformed_frame", "this connection speaks JSON: send text frames")
            raw = message.data
        else:
            raise ProtocolError("malformed_frame", "unsupported frame type")
        size = len(raw.encode()) if isinstance(raw, str) else len(raw)
        if size > self.settings.ws_max_frame_bytes:
            raise ProtocolError(
                "frame_too_large", f"frames are at most {self.settings.ws_max_frame_bytes} bytes"
            )
        try:
            decoded = msgpack.unpackb(raw, raw=False) if self.binary else orjson.loads(raw)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise ProtocolError("malformed_frame", f"the frame does not decode: {exc}") from exc
        if not isinstance(decoded, dict) or not isinstance(decoded.get("type"), str):
            raise ProtocolError(
                "malformed_frame",
                'a message is an object with a "type"',
                decoded if isinstance(decoded, dict) else None,
            )
        return decoded

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        fields = _MESSAGE_FIELDS.get(kind)
        if fields is None:
            raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}")
        unknown = set(message) - fields
        if unknown:
            raise ProtocolError(
                "unknown_field", f"unknown fields: {', '.join(sorted(map(str, unknown)))[:200]}"
            )
        if kind == "ping":
            self.send({"type": "pong", **_echo(message)})
        elif kind == "subscribe":
            await self.subscribe(message)
        else:
            self.unsubscribe(message)

    async def subscribe(self, message: dict[str, Any]) -> None:
        name = message.get("channel")
        if not isinstance(name, str):
            raise ProtocolError("invalid_channel", "channel must be a string")
        try:
            channel, key = shared_channel(name)
            self.engine.check_channel(channel)
        except ChannelError as exc:
            raise ProtocolError(exc.code, exc.message) from exc
        if key in self.feeds:
            raise ProtocolError("already_subscribed", f"already subscribed to {channel.name}")
        if len(self.feeds) >= self.settings.ws_max_subscriptions:
            raise ProtocolError("too_many_subscriptions", f"at most {self.settings.ws_max_subscriptions}")
        recover = message.get("recover", "replay")
        if recover not in ("replay", "latest"):
            raise ProtocolError("bad_request", 'recover is "replay" (default) or "latest"')
        since_text = message.get("since")
        since: Position | None = None
        if since_text is not None:
            if not isinstance(since_text, str):
                raise ProtocolError("invalid_position", "since must be a position string")
            try:
                since = parse_position(since_text)
            except CursorError as exc:
                raise ProtocolError("invalid_position", str(exc)) from exc
        feed = self.engine.feed([channel], self)
        self.feeds[key] = feed
        try:
            # "latest": the current stock instead of a replay; the feed goes live from the position
            # taken before the snapshot was read, so nothing falls in between (versions dedupe).
            position = await feed.start(None if recover == "latest" else since)
        except BrokerError as exc:
            del self.feeds[key]
            if not isinstance(exc, PositionExpired):
                log.warning("subscribe failed: %s", exc)
                raise ProtocolError(
                    "broker_unavailable", "the event stream is unavailable; retry shortly"
                ) from exc
            self.metrics.resyncs.labels("websocket", "position_expired").inc()
            self.send(
                {
                    **resync_message(channel.name, self.engine.region, "position_expired", exc.current),
                    **_echo(message),
                }
            )
            return
        self.metrics.subscriptions.labels("websocket").inc()
        self.send(
            {
                "type": "subscribed",
                "channel": channel.name,
                "position": format_position(position),
                **_echo(message),
            }
        )
        if recover == "latest":
            items = await snapshot_items(self.request.app, channel.region, channel.product_id)
            self.send(
                {
                    "type": "snapshot",
                    "channel": channel.name,
                    "position": format_position(position),
                    "items": items,
                    "snapshot": snapshot_url(channel.region, channel.product_id),
                }
            )
        feed.go_live()

    def unsubscribe(self, message: dict[str, Any]) -> None:
        name = message.get("channel")
        if isinstance(name, str):
            with contextlib.suppress(ChannelError):
                name = shared_channel(name)[1]  # the name it was subscribed under
        feed = self.feeds.pop(name, None) if isinstance(name, str) else None
        if feed is None:
            raise ProtocolError("not_subscribed", f"not subscribed to {str(name)[:140]}")
        feed.close()
        self.metrics.subscriptions.labels("websocket").dec()
        self.send({"type": "unsubscribed", "channel": name, **_echo(message)})

    async def run(self) -> None:
        """Read the client's frames until the connection closes, let go of everything it held, then
        close as aiohttp closes any WebSocket (this is the response's ``write_eof``: see
        :class:`_WebSocket`)."""
        ws = self.ws
        try:
            while True:
                frame = await ws.receive()
                kind = frame.type
                if kind in _ENDS:
                    break
                self._heard = True
                if kind is WSMsgType.PING:
                    await ws.pong(frame.data)
                elif kind is not WSMsgType.PONG:
                    # Frames (pongs too) wait while a message is answered (a subscription's replay may
                    # take a while): the peer counts as heard meanwhile.
                    self._busy = True
                    try:
                        await self._answer(frame)
                    finally:
                        self._busy = False
                del frame  # an idle connection holds on to no message
        finally:
            self.release()
        await web.WebSocketResponse.write_eof(ws)

    def release(self) -> None:
        """Nothing more is written (queued frames are dropped); the feeds and the registration go."""
        if self._released:
            return
        self._released = True
        self._transport = None
        self._drop_queue()
        for feed in self.feeds.values():
            feed.close()
        self.metrics.subscriptions.labels("websocket").dec(len(self.feeds))
        self.feeds.clear()
        self.request.app[CONNECTIONS].discard(self)
        self.metrics.connections.labels("websocket", self.settings.region).dec()


def _echo(message: dict[str, Any]) -> dict[str, Any]:
    ident = message.get("id")
    if isinstance(ident, int | str) and not isinstance(ident, bool) and len(str(ident)) <= 64:
        return {"id": ident}
    return {}


class _WebSocket(web.WebSocketResponse):
    """The connection's response. aiohttp finishes a response by awaiting its ``write_eof`` once the
    handler *and the middlewares around it* have returned: the connection runs there
    (:meth:`WsConnection.run`, which ends with aiohttp's own ``write_eof``), so that an open connection
    keeps no handler or middleware coroutine alive (≈ 1.5 KB per connection)."""

    connection: WsConnection | None = None

    def write_eof(self) -> Coroutine[Any, Any, None]:  # type: ignore[override]  # (as aiohttp's own)
        connection, self.connection = self.connection, None
        return super().write_eof() if connection is None else connection.run()


@routes.get("/api/v1/ws", name="websocket")
async def websocket(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    principal = realtime_principal(request)  # before the upgrade: a bad token is a plain 401
    # No aiohttp heartbeat (a timer per connection) and no autoping: the node's tick pings, and the
    # pongs (like every other frame) reach WsConnection.run(), which is how the peer is known to be there.
    ws = _WebSocket(protocols=_PROTOCOLS, autoping=False, max_msg_size=_HARD_FRAME_LIMIT, compress=False)
    await ws.prepare(request)
    connection = WsConnection(
        request, ws, ws.ws_protocol == MSGPACK_PROTOCOL, seconds_until_expiry(principal)
    )
    request.app[CONNECTIONS].watch(connection, settings.ws_heartbeat_seconds)
    request.app[METRICS].connections.labels("websocket", settings.region).inc()
    ws.connection = connection
    return ws
