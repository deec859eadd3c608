"""The messages of subprotocols ``synchub.json`` and ``synchub.msgpack``: what a WebSocket client may
ask (subscribe, unsubscribe, ping) and how the hub answers, errors included (docs/protocol.md has the
tables). :class:`Messages` is the part of :class:`~hub.transports.websocket.WsConnection` that answers
one message; the connection reads the frames, queues the replies and decides when to answer.

A bad message gets ``{"type": "error", "id": …, "code": …, "message": …}`` and the connection carries on.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, cast

import msgpack
import orjson
from aiohttp import web

from hub.metrics import Metrics
from hub.realtime import resync_message, shared_channel, snapshot_url
from hub.routes.inventory import snapshot_items
from hub.settings import Settings
from hub.transports.wsframes import BINARY, TEXT
from sync.broker import BrokerError, Position, PositionExpired
from sync.channels import ChannelError
from sync.cursor import CursorError, format_position, parse_position
from sync.engine import Feed, Sink, SyncEngine

log = logging.getLogger(__name__)

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


class Messages:
    """Answering one client message (a mixin of the connection, which has the attributes below)."""

    __slots__ = ()
    app: web.Application
    binary: bool
    engine: SyncEngine
    feeds: dict[str, Feed]
    metrics: Metrics
    settings: Settings

    def send(self, message: dict[str, Any]) -> None:
        raise NotImplementedError  # the connection's: queue a reply

    async def _answer(self, opcode: int, payload: bytes) -> None:
        decoded: dict[str, Any] = {}
        try:
            decoded = self.decode(opcode, payload)
            await self.handle(decoded)
        except ProtocolError as exc:
            echo = _echo(exc.request if isinstance(exc.request, dict) else decoded)
            self.send({"type": "error", "code": exc.code, "message": exc.message, **echo})

    def decode(self, opcode: int, payload: bytes) -> dict[str, Any]:
        if opcode == TEXT:
            if self.binary:
                raise ProtocolError(
                    "malformed_frame", "this connection speaks MessagePack: send binary frames"
                )
        elif opcode == BINARY:
            if not self.binary:
                raise ProtocolError("malformed_frame", "this connection speaks JSON: send text frames")
        else:
            raise ProtocolError("malformed_frame", "unsupported frame type")
        if len(payload) > self.settings.ws_max_frame_bytes:
            raise ProtocolError(
                "frame_too_large", f"frames are at most {self.settings.ws_max_frame_bytes} bytes"
            )
        try:
            decoded = msgpack.unpackb(payload, raw=False) if self.binary else orjson.loads(payload)
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
        feed = self.engine.feed([channel], cast(Sink, self))  # (the connection is the sink)
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
            items = await snapshot_items(self.app, channel.region, channel.product_id)
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


def _echo(message: dict[str, Any]) -> dict[str, Any]:
    ident = message.get("id")
    if isinstance(ident, int | str) and not isinstance(ident, bool) and len(str(ident)) <= 64:
        return {"id": ident}
    return {}
