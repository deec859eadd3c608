"""``/api/v1/ws``: the WebSocket transport.

Subprotocol ``synchub.json`` (default; JSON text frames) or ``synchub.msgpack`` (MessagePack binary
frames). Client messages are objects with a ``type``; each may carry an ``id`` echoed in the reply.

    → {"type": "subscribe", "id": 1, "channel": "inventory:eu", "since": "9f3a1c2b:41"}
    ← {"type": "subscribed", "id": 1, "channel": "inventory:eu", "position": "9f3a1c2b:41"}
    ← {"type": "event", "channel": "inventory:eu", "position": "9f3a1c2b:42", "data": {…}}

What each message does and the errors it may get: :mod:`hub.transports.ws_messages`.

aiohttp routes the upgrade request (middlewares, auth, metrics); the hub answers it itself
(:mod:`hub.transports.handshake`) and takes the socket over (:mod:`hub.transports.takeover`): a
:class:`WsConnection` is the socket's asyncio protocol from then on and speaks RFC 6455 with
:mod:`hub.transports.wsframes`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections import deque
from typing import Any

import msgpack
import orjson
from aiohttp import web

from hub.auth import Principal
from hub.browsers import check_origin
from hub.keys import CONNECTION_CAPS, CONNECTIONS, ENGINE, METRICS, SETTINGS, WRITES
from hub.ratelimit.connections import ConnectionSlot
from hub.ratelimit.limiter import gcra
from hub.realtime import (
    CloseCode,
    ConnectionState,
    realtime_principal,
    resync_message,
    seconds_until_expiry,
)
from hub.transports.handshake import check_upgrade, switching_protocols
from hub.transports.takeover import HandedOver, take_over
from hub.transports.writes import NOTHING, TurnQueue
from hub.transports.ws_messages import Messages
from hub.transports.wsframes import (
    CLOSE,
    PING,
    PONG,
    FrameError,
    FrameReader,
    close_code_of,
    close_frame,
    control_frame,
)
from sync.broker import Position
from sync.channels import Channel
from sync.engine import Feed
from sync.events import Event, websocket_frame

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

JSON_PROTOCOL = "synchub.json"
MSGPACK_PROTOCOL = "synchub.msgpack"
_HARD_FRAME_LIMIT = 1024 * 1024  # beyond this the connection is failed with 1009; below, an error reply
_PROTOCOLS = (JSON_PROTOCOL, MSGPACK_PROTOCOL)
_PING = control_frame(PING)
_CLOSE_WAIT = 2.0  # seconds a closing connection waits for the peer's close frame before letting go
_INBOX_LIMIT = 32  # messages waiting for an answer before the socket stops being read
_INTERNAL_ERROR = 1011
_OPEN = ConnectionState.OPEN  # (a module global is found faster than an enum member, per delivery)
# One packer for every reply: msgpack.packb makes a Packer per call (~1 µs of a reply's ~1.5). Used on
# the event loop only, and it empties itself after each pack, an error included.
_PACKER = msgpack.Packer()
_REFUSALS_BEFORE_CLOSE = 3  # bursts' worth of messages refused in a row, then the connection is closed


class WsConnection(TurnQueue, Messages, asyncio.Protocol):
    """One WebSocket client — the socket's protocol after the handshake: its subscriptions (one feed
    each), what is queued for it, and the reading of its frames.

    Outgoing frames are queued and written by the app's :class:`~hub.transports.writes.WriteBatcher`,
    all of one turn in one write, straight to the transport. Nothing waits on a slow reader: what the
    kernel does not take stays in the transport's buffer, and a client whose backlog there passes
    ``send_buffer_messages`` or ``send_buffer_bytes`` is cut off as a slow consumer (it resumes from
    its last position, possibly on another node).

    Incoming messages are answered one at a time, in order, by a task that exists only while there
    is something to answer (a subscription's replay may take a while); past 32 waiting messages the
    socket is not read until they are answered. Pings are answered at once, between any frames.

    No timer or task of its own while idle: the node's heartbeat tick (:meth:`beat`) pings a peer that
    has been silent for ``ws_heartbeat_seconds`` (each connection waits a random half to all of it, so
    that connections opened together are not pinged together), drops one that stays silent for half of
    ``ws_heartbeat_seconds`` again, and closes the connection when its token expires.

    Messages are rate limited per connection (``ws_message_rate``, GCRA in memory: two numbers on the
    connection): a message over the rate is answered ``rate_limited`` and not acted on; a client that
    goes on sending through three bursts' worth of refusals in a row is closed with 4104.

    Closing: the side that closes sends a close frame; the other answers with one; the server then
    ends the TCP connection (RFC 6455 §7.1.1). A client that breaks the framing rules gets a close
    frame with the code of its fault (1002, 1007, 1009), after which its input is discarded.
    """

    __slots__ = (
        "_answering",
        "_busy",
        "_closed",
        "_closing",
        "_expires_at",
        "_expiry_noticed",
        "_heard",
        "_heartbeat",
        "_inbox",
        "_msg_refused",
        "_msg_tat",
        "_pinged_at",
        "_pong_wait",
        "_quiet_since",
        "_reader",
        "_released",
        "_transport",
        "app",
        "binary",
        "cap",
        "engine",
        "feeds",
        "meter",
        "metrics",
        "origin",
        "principal",
        "settings",
        "state",
    )

    def __init__(
        self,
        app: web.Application,
        transport: asyncio.Transport,
        binary: bool,
        principal: Principal | None = None,
        cap: ConnectionSlot | None = None,
    ) -> None:
        settings = app[SETTINGS]
        self.app = app
        self.principal = principal
        self.cap = cap  # this connection's place under the node's connection caps
        self._msg_tat: int | None = None  # the message rate's GCRA state (hub/ratelimit/limiter.py)
        self._msg_refused = 0  # messages refused in a row
        self.origin: str | None = None  # made when it first pushes (ws_messages.Messages.cart_push)
        expires_in = seconds_until_expiry(principal)
        self.binary = binary
        self.engine = app[ENGINE]
        self.metrics = app[METRICS]
        self.settings = settings
        self.feeds: dict[str, Feed] = {}
        self.state = ConnectionState.OPEN
        self._transport: asyncio.Transport | None = transport
        # None once the connection failed: what the peer sends after that is not read.
        self._reader: FrameReader | None = FrameReader(_HARD_FRAME_LIMIT)
        self._inbox: deque[tuple[int, bytes]] | None = None  # only while messages wait for an answer
        self._answering: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed: asyncio.Future[None] | None = None  # only while a close waits for the peer
        writes = app[WRITES]
        self.meter = writes.default_meter
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
        self._expiry_noticed = False  # the token_expired notice was sent
        self._released = False

    # -- outgoing ----------------------------------------------------------------------------------
    def encode(self, message: dict[str, Any]) -> bytes:
        if self.binary:
            packed: bytes = _PACKER.pack(message)
            return packed
        return orjson.dumps(message)

    def send(self, message: dict[str, Any]) -> None:
        self._queue(websocket_frame(self.encode(message), self.binary), None)

    def deliver(self, event: Event, channel: Channel) -> None:
        # The event's frame is built once and shared by every connection: no copy, no re-encoding.
        # (_queue written out: this runs once per connection per event.)
        if self.state is _OPEN and (event.origin is None or event.origin != self.origin):
            self._enqueue(event.ws_frame(channel.name, self.binary), event.ts)

    def renew(self, principal: Principal) -> None:
        self.principal = principal
        expires_in = seconds_until_expiry(principal)
        now = asyncio.get_running_loop().time()
        self._expires_at = None if expires_in is None else now + expires_in
        self._expiry_noticed = False

    def push_origin(self) -> str:
        origin = self.origin
        if origin is None:
            origin = self.origin = secrets.token_urlsafe(9)
        return origin

    def _queue(self, frame: bytes, ts: float | None) -> None:
        # Open implies a transport: connection_lost takes both away together.
        if self.state is _OPEN:
            self._enqueue(frame, ts)

    def flush(self) -> tuple[int, int, float | None]:
        """Write what was queued this turn in one write (called by the batcher)."""
        transport = self._transport
        if self.state is not _OPEN or transport is None or transport.is_closing():
            self._drop_queue()
            return NOTHING
        written = self._write_turn(transport)
        if written is None:  # too slow: cut off; it resumes from the last position it received
            self.metrics.slow_consumers.labels("websocket").inc()
            self.close_soon(CloseCode.SLOW_CONSUMER, "slow consumer: resume from your last position")
            return NOTHING
        return written

    def resync(self, reason: str, current: Position, channels: tuple[Channel, ...]) -> None:
        self.metrics.resyncs.labels("websocket", reason).inc()
        for channel in channels:
            self.send(resync_message((channel,), reason, current))

    def beat(self, now: float) -> None:
        """The node's heartbeat tick (see the class)."""
        if self.state is not ConnectionState.OPEN:
            return
        expires_at = self._expires_at
        if expires_at is not None and now >= expires_at:
            grace = self.settings.token_refresh_grace_seconds
            if now >= expires_at + grace:
                self.close_soon(CloseCode.AUTH_EXPIRED, "token expired: reconnect with a new one")
                return
            if not self._expiry_noticed:
                # (hub/transports/ws_session.py: a refresh within the grace keeps the connection)
                self._expiry_noticed = True
                self.send({"type": "token_expired", "grace": round(expires_at + grace - now, 3)})
        if self._heard or self._busy:
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

    def message_refused(self) -> float | None:
        """Count one message against the connection's rate: None if it may be answered, else the
        seconds until one would be (after too many refusals in a row, the connection is closing)."""
        policy = self.settings.ws_message_rate
        if policy is None or not self.settings.rate_limits_enabled:
            return None
        decision, tat = gcra(self._msg_tat, time.monotonic_ns() // 1000, policy.interval_us, policy.burst)
        if tat is not None:
            self._msg_tat, self._msg_refused = tat, 0
            return None
        self._msg_refused += 1
        if self._msg_refused == 1:
            self.metrics.rate_limited.labels("ws_message", "connection").inc()
        if self._msg_refused >= _REFUSALS_BEFORE_CLOSE * policy.burst:
            self.flush()  # the refusals already queued go first
            self.close_soon(CloseCode.RATE_LIMITED, "too many messages: back off, then reconnect")
        return decision.retry_after

    # -- closing -----------------------------------------------------------------------------------
    async def go_away(self) -> None:
        await self.close(CloseCode.GOING_AWAY, "node going away")

    def close_soon(self, code: CloseCode, reason: str) -> None:
        """Close without sending what is still queued (a slow consumer, an expired token)."""
        if self.state is ConnectionState.OPEN:
            self.state = self.state.to(ConnectionState.CLOSING)
            self._closing = asyncio.create_task(self.close(code, reason))

    async def close(self, code: CloseCode, reason: str) -> None:
        """Send a close frame and wait (at most two seconds) for the peer's, which ends the connection;
        a peer that does not answer — stalled, or gone — is let go of. Returns once it is closed."""
        if self.state is ConnectionState.CLOSED:
            return
        if self.state is ConnectionState.OPEN:
            self.flush()  # a graceful close (going away) sends what was queued first
            self.state = self.state.to(ConnectionState.CLOSING)
        transport = self._transport
        if transport is None:
            return
        self._send_close(transport, code, reason)
        closed = self._closed
        assert closed is not None  # (_send_close made it, now or before)
        for feed in self.feeds.values():
            feed.close()
        try:
            await asyncio.wait_for(asyncio.shield(closed), timeout=_CLOSE_WAIT)
        except TimeoutError:
            # abort, not close: close would wait to flush what the peer is not reading.
            transport.abort()

    def _send_close(self, transport: asyncio.Transport, code: int, reason: str) -> bool:
        """Send our close frame, once per connection (False: it was sent already); :attr:`_closed` is
        then awaited until the connection is gone."""
        if self._closed is not None:
            return False
        self._closed = asyncio.get_running_loop().create_future()
        if not transport.is_closing():  # (else the peer closed first, and was answered)
            transport.write(close_frame(code, reason))
        return True

    def _fail(self, code: int, reason: str) -> None:
        """The peer broke the protocol (or answering it broke): tell it why, read nothing more, and
        end the connection once the close frame is out (the peer has two seconds to take it)."""
        transport = self._transport
        self._reader = None
        if self.state is ConnectionState.OPEN:
            self.flush()  # the answers already given go first
            self.state = self.state.to(ConnectionState.CLOSING)
        if transport is None or transport.is_closing() or not self._send_close(transport, code, reason):
            return  # gone, or a close is under way already (it ends the connection within 2 s)
        if transport.can_write_eof():
            # Half-close: the close frame and then FIN reach the peer, and what it still sends is
            # read and dropped — closing at once could answer its unread data with a reset, which
            # may destroy the close frame before the peer reads it.
            transport.write_eof()
            asyncio.get_running_loop().call_later(_CLOSE_WAIT, transport.abort)
        else:
            transport.close()

    # -- the socket (asyncio.Protocol) ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            return
        self._heard = True
        try:
            frames = reader.feed(data)
        except FrameError as exc:
            self._fail(exc.code, exc.reason)
            return
        for opcode, payload in frames:
            if opcode == PING:
                transport = self._transport
                if transport is not None and self.state is ConnectionState.OPEN:
                    if transport.get_write_buffer_size() > self.settings.send_buffer_bytes:
                        # Pongs go around the send queue's limits: a peer that pings and never reads
                        # would grow the socket's write buffer without end. It is cut off.
                        self.metrics.slow_consumers.labels("websocket").inc()
                        transport.abort()
                        return
                    transport.write(control_frame(PONG, payload))
            elif opcode == CLOSE:
                self._peer_closed(payload)
                return
            elif opcode != PONG and self.state is ConnectionState.OPEN:
                self._answer_soon(opcode, payload)

    def _peer_closed(self, payload: bytes) -> None:
        try:
            code, _ = close_code_of(payload)
        except FrameError as exc:
            self._fail(exc.code, exc.reason)
            return
        transport = self._transport
        self._reader = None
        if transport is None:
            return
        if self.state is ConnectionState.OPEN:
            # The peer closes: what was queued for it is dropped; the answer echoes its code.
            self.state = self.state.to(ConnectionState.CLOSING)
            self._drop_queue()
            transport.write(close_frame(code or CloseCode.NORMAL))
        transport.close()  # the server ends the TCP connection (RFC 6455 §7.1.1)

    def eof_received(self) -> bool | None:
        return None  # the peer is done sending: the transport closes, then connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._reader = None
        if self.state is not ConnectionState.CLOSED:
            self.state = self.state.to(ConnectionState.CLOSED)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._answering is None:  # else when the answer in progress ends (it may hold a feed)
            self.release()

    # -- incoming ----------------------------------------------------------------------------------
    def _answer_soon(self, opcode: int, payload: bytes) -> None:
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        limit = self.settings.ws_max_frame_bytes
        if len(payload) > limit:
            # It is refused as too large when its turn comes: what waits need not be all of it (32
            # waiting messages of up to 1 MiB each would be 32 MiB held for one client).
            payload = payload[: limit + 1]
        inbox.append((opcode, payload))
        transport = self._transport
        if len(inbox) >= _INBOX_LIMIT and transport is not None:
            transport.pause_reading()
        if self._answering is None:
            self._answering = asyncio.create_task(self._answer_inbox(inbox))

    async def _answer_inbox(self, inbox: deque[tuple[int, bytes]]) -> None:
        try:
            while inbox and self.state is ConnectionState.OPEN:
                opcode, payload = inbox.popleft()
                transport = self._transport
                if len(inbox) == _INBOX_LIMIT // 2 and transport is not None:
                    transport.resume_reading()  # (a no-op unless it was paused)
                # Frames (pongs too) may wait behind a long answer: the peer counts as heard meanwhile.
                self._busy = True
                await self._answer(opcode, payload)
        except Exception:
            log.exception("answering a WebSocket message failed")
            self._fail(_INTERNAL_ERROR, "internal error")
        finally:
            self._busy = False
            self._answering = None
            self._inbox = None  # an idle connection holds no queue
            if self.state is ConnectionState.CLOSED:
                self.release()

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
        self.app[CONNECTIONS].discard(self)
        if self.cap is not None:
            self.cap.release()
        self.metrics.connections.labels("websocket", self.settings.region).dec()


@routes.get("/api/v1/ws", name="websocket")
async def websocket(request: web.Request) -> web.StreamResponse:
    principal = await realtime_principal(request)  # before the upgrade: a bad token is a plain 401
    accept, protocol = check_upgrade(request, _PROTOCOLS)
    check_origin(request)
    app, settings = request.app, request.app[SETTINGS]
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("the client went away before the upgrade")
    binary = protocol == MSGPACK_PROTOCOL
    cap = app[CONNECTION_CAPS].acquire(principal, request.remote)  # before the upgrade: a plain 429
    connection = WsConnection(app, transport, binary, principal, cap)
    try:
        early = take_over(request, switching_protocols(accept, protocol), connection)
    except BaseException:
        cap.release()
        raise
    app[CONNECTIONS].watch(connection, settings.ws_heartbeat_seconds)
    app[METRICS].connections.labels("websocket", settings.region).inc()
    if early:
        connection.data_received(early)
    return HandedOver(status=101)
