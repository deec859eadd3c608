"""What the three transports share: close codes, the bounded send buffer, the resync message, the
registry of open connections (for graceful shutdown) and token checks for long-lived connections.

Close and error codes come in ranges that tell a client what to do (docs/protocol.md has the table):

    1000, 1001         normal close / node going away: reconnect (another node) and resume
    4000–4099          the client is wrong: do not reconnect as is
    4100–4199          transient: reconnect and resume from the last position
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hub.auth import Principal, decode_token
from hub.errors import Unauthenticated
from hub.keys import SETTINGS
from sync.broker import Position
from sync.cursor import format_position


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    BAD_REQUEST = 4000
    UNAUTHORIZED = 4001
    SLOW_CONSUMER = 4101
    AUTH_EXPIRED = 4102
    RESYNC_REQUIRED = 4103


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


def resync_message(channel: str, region: str, reason: str, current: Position | None) -> dict[str, Any]:
    return {
        "type": "resync",
        "channel": channel,
        "reason": reason,
        "position": format_position(current) if current else None,
        "snapshot": snapshot_url(region),
    }


class Connections:
    """The open real-time connections of this node, so that shutdown can tell each to go away."""

    def __init__(self) -> None:
        self._closers: dict[object, Callable[[], Awaitable[None]]] = {}
        self.draining = False

    def add(self, key: object, close: Callable[[], Awaitable[None]]) -> None:
        self._closers[key] = close

    def discard(self, key: object) -> None:
        self._closers.pop(key, None)

    def __len__(self) -> int:
        return len(self._closers)

    async def close_all(self) -> None:
        self.draining = True
        closers = list(self._closers.values())
        await asyncio.gather(*(close() for close in closers), return_exceptions=True)


class SendBuffer:
    """A bounded queue of encoded messages for one connection, drained by one writer task.

    ``push`` never blocks the fan-out: when the client has fallen ``max_messages`` or ``max_bytes``
    behind, the buffer reports overflow and the transport disconnects it with the slow-consumer code;
    the client resumes from its last position, possibly on another node.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self._items: deque[tuple[Any, int, float | None]] = deque()
        self._bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._ready = asyncio.Event()
        self.closed = False

    def push(self, item: Any, size: int, ts: float | None = None) -> bool:
        """Queue one message; False if the buffer is full (the caller disconnects the client)."""
        if self.closed:
            return True
        if len(self._items) >= self._max_messages or self._bytes + size > self._max_bytes:
            return False
        self._items.append((item, size, ts))
        self._bytes += size
        self._ready.set()
        return True

    async def take(self) -> list[tuple[Any, int, float | None]]:
        """Everything queued, once there is something (or [] once closed)."""
        while not self._items and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        batch = list(self._items)
        self._items.clear()
        self._bytes = 0
        return batch

    def close(self) -> None:
        self.closed = True
        self._ready.set()


def realtime_principal(request: web.Request) -> Principal | None:
    """A token is optional for public channels, but one that is sent must be valid. Browsers cannot
    set headers on WebSocket and EventSource requests, so ``access_token`` in the query works too."""
    header = request.headers.get("Authorization")
    token = None
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'", code="invalid_token")
        token = value.strip()
    elif "access_token" in request.query:
        token = request.query["access_token"]
    if token is None:
        return None
    return decode_token(request.app[SETTINGS].jwt_secret, token)


def seconds_until_expiry(principal: Principal | None) -> float | None:
    return None if principal is None else max(0.0, principal.expires_at - time.time())
