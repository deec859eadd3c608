"""What a subscription yields: events, resync notices and the end of the subscription."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Transport(enum.Enum):
    """How the client listens: the WebSocket carries everything; SSE and long-poll listen, and writes
    (cart and review sync/push) go over REST."""

    WEBSOCKET = "websocket"
    SSE = "sse"
    POLL = "poll"


class State(enum.Enum):
    """The connection's state (``Client.state``)."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a channel: ``data`` is the event's payload (docs/protocol.md, Events)."""

    channel: str
    position: str
    data: dict[str, Any]

    @property
    def type(self) -> str | None:
        kind = self.data.get("type")
        return kind if isinstance(kind, str) else None


@dataclass(frozen=True, slots=True)
class Resync:
    """The position could not be resumed (``position_expired``), the stream jumped (``epoch_changed``,
    ``gap``) or the hub closed with 4103 (``resync_required``): read ``snapshot`` (a path, or None)."""

    channel: str
    reason: str
    position: str | None
    snapshot: str | None


@dataclass(frozen=True, slots=True)
class Ended:
    """The subscription is over: refused by the hub, or the client stopped; ``error`` says why."""

    channel: str
    error: Exception | None


Item = Event | Resync | Ended
