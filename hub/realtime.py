"""What the three transports share: close codes, the resync message, the registry of open connections
(for graceful shutdown, and the node's one heartbeat timer) and token checks for long-lived connections.

Close and error codes come in ranges that tell a client what to do (docs/protocol.md has the table):

    1000, 1001         normal close / node going away: reconnect (another node) and resume
    4000–4099          the client is wrong: do not reconnect as is
    4100–4199          transient: reconnect and resume from the last position
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aiohttp import web

from hub.auth import Principal, authenticate
from hub.errors import Unauthenticated
from hub.keys import SETTINGS
from hub.tickets import redeem
from sync.broker import Position
from sync.channels import CART, INVENTORY, PARTS_REQUESTS, REVIEWS, Channel
from sync.cursor import format_position

log = logging.getLogger(__name__)


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    BAD_REQUEST = 4000
    UNAUTHORIZED = 4001
    SLOW_CONSUMER = 4101
    AUTH_EXPIRED = 4102
    RESYNC_REQUIRED = 4103
    RATE_LIMITED = 4104


class ConnectionState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"

    def to(self, target: ConnectionState) -> ConnectionState:
        allowed = {
            ConnectionState.OPEN: {ConnectionState.CLOSING, ConnectionState.CLOSED},
            ConnectionState.CLOSING: {ConnectionState.CLOSED},
            ConnectionState.CLOSED: set(),
        }
        if target not in allowed[self]:
            raise RuntimeError(f"connection cannot go from {self.value} to {target.value}")
        return target


def snapshot_url(region: str, product_id: str | None = None) -> str:
    url = f"/api/v1/inventory?region={region}"
    return url + f"&product_id={product_id}" if product_id else url


def channel_snapshot_url(channel: Channel) -> str | None:
    """Where a client that must resync ``channel`` reads the current state: the region's stock, the
    cart (then ``sync`` again), the school's parts requests; a user channel's events are notifications
    with no snapshot."""
    if channel.kind is INVENTORY:
        return snapshot_url(channel.region)
    if channel.kind is CART:
        return f"/api/v1/carts/{channel.key}"
    if channel.kind is REVIEWS and channel.key is not None:
        return f"/api/v1/products/{channel.key}/reviews"
    if channel.kind is PARTS_REQUESTS:
        return f"/api/v1/schools/{channel.key}/parts-requests"
    return None


def first_snapshot_url(channels: Sequence[Channel]) -> str | None:
    """The snapshot of a feed of several channels: the first of them that has one."""
    return next(filter(None, (channel_snapshot_url(c) for c in channels)), None)


def resync_message(channels: Sequence[Channel], reason: str, current: Position | None) -> dict[str, Any]:
    """A resync for one channel (WebSocket: one per subscription) or a feed's channels (SSE: their
    names comma-separated)."""
    return {
        "type": "resync",
        "channel": ",".join(c.name for c in channels),
        "reason": reason,
        "position": format_position(current) if current else None,
        "snapshot": first_snapshot_url(channels),
    }


class Watched(Protocol):
    """A long-lived connection (WebSocket, SSE) as the registry sees it."""

    def beat(self, now: float) -> None:
        """The app's heartbeat tick (``now``: the loop's clock): ping, check the peer, expire."""
        ...

    async def go_away(self) -> None:
        """The node is shutting down: tell the client to resume elsewhere, and stop."""
        ...


class Connections:
    """The open real-time connections of this node, so that shutdown can tell each to go away.

    Long-lived connections are *watched*: one timer for the whole node (not one per connection) calls
    each one's :meth:`Watched.beat` every tick — at most a second apart, a quarter of the shortest
    heartbeat interval asked for — and runs only while some connection is watched. A beat is a few
    attribute checks, so an idle connection costs no timer, task or wake-up of its own.
    """

    def __init__(self) -> None:
        self._closers: dict[object, Callable[[], Awaitable[None]]] = {}
        self._watched: dict[object, Watched] = {}
        self._tick = 1.0
        self._timer: asyncio.TimerHandle | None = None
        self.draining = False

    def add(self, key: object, close: Callable[[], Awaitable[None]]) -> None:
        self._closers[key] = close

    def watch(self, connection: Watched, interval: float) -> None:
        """Beat ``connection`` until it is discarded; ``interval`` is its heartbeat's, in seconds."""
        self._watched[connection] = connection
        tick = min(1.0, max(0.01, interval / 4))
        if tick < self._tick:
            self._tick = tick
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._tick, self._beat)

    def discard(self, key: object) -> None:
        self._closers.pop(key, None)
        self._watched.pop(key, None)

    def __len__(self) -> int:
        return len(self._closers) + len(self._watched)

    def _beat(self) -> None:
        self._timer = None
        if not self._watched:
            return  # the next watch() starts the timer again
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in tuple(self._watched.values()):  # a beat may end its connection (and discard it)
            try:
                connection.beat(now)
            except Exception:  # one broken connection must not stop the others' heartbeats
                log.exception("a connection's heartbeat failed")
        if self._watched:
            self._timer = loop.call_later(self._tick, self._beat)

    async def close_all(self) -> None:
        self.draining = True
        closers = [*self._closers.values(), *(c.go_away for c in self._watched.values())]
        await asyncio.gather(*(close() for close in closers), return_exceptions=True)


async def realtime_principal(request: web.Request) -> Principal | None:
    """A token is optional for public channels, but one that is sent must be valid. Browsers cannot
    set headers on WebSocket and EventSource requests: they send a ticket (``?ticket=``, hub/tickets.py);
    ``?access_token=`` only where ``--tokens-in-urls`` allows it."""
    header = request.headers.get("Authorization")
    token = None
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'", code="invalid_token")
        token = value.strip()
    elif "ticket" in request.query:
        return await redeem(request, request.query["ticket"])
    elif "access_token" in request.query:
        if not request.app[SETTINGS].tokens_in_urls:
            raise Unauthenticated(
                "tokens in URLs are refused here: POST /api/v1/realtime/tickets and send ?ticket=",
                code="token_in_url_refused",
            )
        token = request.query["access_token"]
    if token is None:
        return None
    return await authenticate(request.app, token)


def seconds_until_expiry(principal: Principal | None) -> float | None:
    return None if principal is None else max(0.0, principal.expires_at - time.time())
