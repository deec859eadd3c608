"""The Broker seam: how an event published on one node reaches every node of its region.

Implementations: :mod:`sync.broker_memory` (the embedded default, one process). Every implementation
passes ``tests/test_broker_contract.py``.

Guarantees:

* **Streams.** A stream is a named, append-only sequence of publications (e.g. ``inventory.eu``).
* **Positions.** ``publish`` returns the publication's :class:`Position` ``(epoch, offset)``.
  Offsets grow strictly within an epoch. The epoch names one incarnation of the stream: if the stream
  is lost or recreated (a restarted in-process broker, a flushed Redis) the epoch changes, so a
  position from before is recognisably stale instead of silently pointing into a different history.
* **Order.** Subscribers of a stream see its publications in offset order, each once per subscription.
* **Delivery.** From a successful ``publish`` to every subscriber connected at that time: at least
  once across brokers that retry, exactly once within the in-memory broker. Events published while a
  subscriber was away are recovered with :meth:`Broker.history` from its last position.
* **Retention.** A stream keeps a bounded tail. ``history`` from a position older than that tail, or
  from another epoch, raises :class:`PositionExpired`: the caller must resync from a snapshot; it
  never receives a partial replay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True, order=True)
class Position:
    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"


@dataclass(frozen=True, slots=True)
class Publication:
    stream: str
    position: Position
    data: bytes  # the encoded event, as published


class BrokerError(Exception):
    """Base of broker failures."""


class PositionExpired(BrokerError):
    """The position is older than the stream's retention or belongs to another epoch."""

    def __init__(self, stream: str, position: Position, current: Position | None) -> None:
        super().__init__(f"position {position} of {stream} can no longer be resumed")
        self.stream = stream
        self.position = position
        self.current = current


Handler = Callable[[Publication], None]


class Broker(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def publish(self, stream: str, data: bytes) -> Position: ...
    async def history(self, stream: str, since: Position, limit: int = 10_000) -> list[Publication]:
        """Publications strictly after ``since``, oldest first. PositionExpired if not resumable."""
        ...

    async def top(self, stream: str) -> Position:
        """The position of the newest publication (offset 0 for an empty stream)."""
        ...

    def subscribe(self, stream: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler`` for every later publication of ``stream``; return an unsubscribe.

        Handlers run on the event loop and must not block: they hand the publication on.
        """
        ...
