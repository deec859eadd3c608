"""The messages of subprotocols ``synchub.json`` and ``synchub.msgpack``: what a WebSocket client may
ask (subscribe, unsubscribe, ping) and how the hub answers, errors included (docs/protocol.md has the
tables). :class:`Messages` is the part of :class:`~hub.transports.websocket.WsConnection` that answers
one message; the connection reads the frames, queues the replies and decides when to answer.

A bad message gets ``{"type": "error", "id": …, "code": …, "message": …}`` and the connection carries on.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, cast

import msgpack
import orjson
from aiohttp import web

from crdt.wire import encode_context
from hub.auth import Principal
from hub.carts import (
    RULES as CART_RULES,
)
from hub.carts import (
    CartInputError,
    decode_delta,
    encode_delta,
    open_for,
    read_context,
    read_mutation_id,
)
from hub.channel_access import resolve_channel
from hub.errors import from_store_error
from hub.keys import STORE
from hub.metrics import Metrics
from hub.realtime import resync_message, snapshot_url
from hub.routes.inventory import snapshot_items
from hub.settings import Settings
from hub.transports.ws_reviews import document_writer, review_push, review_sync
from hub.transports.ws_session import (
    REFRESH_FIELDS,
    SESSION_FIELDS,
    RefreshRefused,
    recheck_subscriptions,
    session_reply,
    verify_refresh,
)
from hub.transports.wsframes import BINARY, TEXT
from storage.carts import CartPush, PushStatus
from storage.errors import StoreError
from sync.broker import BrokerError, Position, PositionExpired
from sync.channels import INVENTORY, ChannelError, parse_channel_name
from sync.cursor import CursorError, format_position, parse_position
from sync.engine import Feed, Sink, SyncEngine

log = logging.getLogger(__name__)

_MESSAGE_FIELDS = {
    "subscribe": {"type", "id", "channel", "since", "recover"},
    "unsubscribe": {"type", "id", "channel"},
    "ping": {"type", "id"},
    "sync": {"type", "id", "cart", "review", "context"},
    "push": {"type", "id", "cart", "review", "mutation_id", "delta"},
    "session": SESSION_FIELDS,
    "refresh": REFRESH_FIELDS,
}


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, request: Any = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request = request  # the decoded message, when there was one: its id is echoed
        self.extra = extra  # more members of the error reply


class Messages:
    """Answering one client message (a mixin of the connection, which has the attributes below)."""

    __slots__ = ()
    app: web.Application
    binary: bool
    engine: SyncEngine
    feeds: dict[str, Feed]
    metrics: Metrics
    principal: Principal | None
    settings: Settings

    def send(self, message: dict[str, Any]) -> None:
        raise NotImplementedError  # the connection's: queue a reply

    def message_refused(self) -> float | None:
        """The connection's message rate: None, or the seconds until a message would be answered."""
        raise NotImplementedError  # the connection's

    def renew(self, principal: Principal) -> None:
        """Take ``principal`` as the connection's credential from now on (its new deadline with it)."""
        raise NotImplementedError  # the connection's

    def push_origin(self) -> str:
        """This connection's token in the events of the deltas it pushes: they are not sent back to
        it (its ack stands for them), only to the cart's other subscribers."""
        raise NotImplementedError  # the connection's

    async def _answer(self, opcode: int, payload: bytes) -> None:
        decoded: dict[str, Any] = {}
        try:
            retry_after = self.message_refused()
            if retry_after is not None:
                with contextlib.suppress(ProtocolError):
                    decoded = self.decode(opcode, payload)  # (for its id)
                raise ProtocolError(
                    "rate_limited",
                    f"too many messages: retry in {retry_after:.3f} s",
                    retry_after_ms=math.ceil(retry_after * 1000),
                )
            decoded = self.decode(opcode, payload)
            await self.handle(decoded)
        except ProtocolError as exc:
            echo = _echo(exc.request if isinstance(exc.request, dict) else decoded)
            self.send({"type": "error", "code": exc.code, "message": exc.message, **exc.extra, **echo})

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
        elif kind == "unsubscribe":
            self.unsubscribe(message)
        elif kind == "session":
            self.send(
                {**session_reply(self.principal, self.settings.token_refresh_grace_seconds), **_echo(message)}
            )
        elif kind == "refresh":
            await self.refresh(message)
        else:
            try:
                if "review" in message:
                    if "cart" in message:
                        raise ProtocolError("bad_request", f"a {kind} names a cart or a review, not both")
                    handler = review_sync if kind == "sync" else review_push
                    await handler(self, message, _echo(message))
                else:
                    await (self.cart_sync(message) if kind == "sync" else self.cart_push(message))
            except CartInputError as exc:
                raise ProtocolError(exc.code, exc.message) from exc
            except StoreError as exc:
                problem = from_store_error(exc)
                raise ProtocolError(problem.code, problem.detail) from exc

    def _cart_user(self, message: dict[str, Any]) -> tuple[Principal, str]:
        """The connection's user, who may edit carts, and the message's cart id."""
        return document_writer(self.principal, message, "cart")

    async def cart_sync(self, message: dict[str, Any]) -> None:
        """Sync step: the device's context in, what it lacks and the hub's context out."""
        principal, cart_id = self._cart_user(message)
        context = read_context(message.get("context"))
        document = await open_for(self.app[STORE], cart_id, principal.sub)
        lacking = document.cart.sync_reply(context)
        self.send(
            {
                "type": "synced",
                "cart": cart_id,
                "version": document.version,
                "status": "checked_out" if document.cart.closed else "open",
                "delta": None if lacking is None else encode_delta(lacking, self.binary),
                "context": encode_context(document.cart.context),
                **_echo(message),
            }
        )

    async def cart_push(self, message: dict[str, Any]) -> None:
        """A device's delta: answered ``ack`` only once merged and committed."""
        principal, cart_id = self._cart_user(message)
        mutation_id = read_mutation_id(message.get("mutation_id"))
        delta = decode_delta(message.get("delta"), self.binary)
        result = await self.app[STORE].push_cart(
            cart_id, principal.sub, [CartPush(mutation_id, delta, self.push_origin())], CART_RULES
        )
        outcome = result.outcomes[0]
        self.metrics.cart_pushes.labels(outcome.status.value).inc()
        if outcome.status is PushStatus.REFUSED:
            self.send(
                {
                    "type": "error",
                    "code": outcome.code,
                    "message": outcome.message,
                    "cart": cart_id,
                    "mutation_id": mutation_id,
                    **_echo(message),
                }
            )
            return
        self.send(
            {
                "type": "ack",
                "cart": cart_id,
                "mutation_id": mutation_id,
                "status": outcome.status.value,
                "version": outcome.version,
                **_echo(message),
            }
        )

    async def subscribe(self, message: dict[str, Any]) -> None:
        name = message.get("channel")
        if not isinstance(name, str):
            raise ProtocolError("invalid_channel", "channel must be a string")
        try:
            channel = await resolve_channel(self.app, self.principal, name)
        except ChannelError as exc:
            raise ProtocolError(exc.code, exc.message) from exc
        key = channel.name
        if key in self.feeds:
            raise ProtocolError("already_subscribed", f"already subscribed to {channel.name}")
        if len(self.feeds) >= self.settings.ws_max_subscriptions:
            raise ProtocolError("too_many_subscriptions", f"at most {self.settings.ws_max_subscriptions}")
        recover = message.get("recover", "replay")
        if recover not in ("replay", "latest"):
            raise ProtocolError("bad_request", 'recover is "replay" (default) or "latest"')
        if recover == "latest" and channel.kind is not INVENTORY:
            raise ProtocolError(
                "bad_request",
                'recover "latest" serves inventory snapshots; a cart resumes with "sync", reviews from'
                " their listing",
            )
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
                    **resync_message((channel,), "position_expired", exc.current),
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

    async def refresh(self, message: dict[str, Any]) -> None:
        """A new token for the connection, without reconnecting (hub/transports/ws_session.py)."""
        try:
            renewed = await verify_refresh(self, message)
        except RefreshRefused as exc:
            raise ProtocolError(exc.code, exc.message) from exc
        for notice in await recheck_subscriptions(self, renewed):
            self.send(notice)
        self.renew(renewed)
        reply = session_reply(renewed, self.settings.token_refresh_grace_seconds)
        self.send({"type": "refreshed", "ttl": reply["ttl"], **_echo(message)})

    def unsubscribe(self, message: dict[str, Any]) -> None:
        name = message.get("channel")
        if isinstance(name, str):
            with contextlib.suppress(ChannelError):
                name = parse_channel_name(name).name  # the name it was subscribed under
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
