"""The Broker seam: how an event published on one node reaches every node of its region.

Implementations: :mod:`sync.broker_memory` (the embedded default, one process),
:mod:`sync.broker_redis` (Redis Streams on one Redis or a Redis Cluster, shared by every node of a
region) and :mod:`sync.broker_nats` (NATS JetStream). Every implementation passes
``tests/test_broker_contract.py``.

Guarantees:

* **Streams.** A stream is a named, append-only sequence of publications (e.g. ``inventory.eu``).
* **Positions.** ``publish`` returns the publication's :class:`Position` ``(epoch, offset)``.
  Offsets grow strictly within an epoch. The epoch names one incarnation of the stream: if the stream
  is lost or recreated (a restarted in-process broker, a flushed Redis), or its history diverged (a
  failover lost publications whose offsets were then given to others), the epoch changes, so a
  position from before is recognisably stale instead of silently pointing into a different history.
* **Order.** Subscribers of a stream see its publications in offset order, each once per subscription.
  Offsets are contiguous within an epoch (each publish adds exactly one), so a subscriber that sees an
  offset jump knows it missed publications (e.g. trimmed while its reader was cut off) and must resync.
* **Delivery.** From a successful ``publish`` to every subscriber connected at that time: at least
  once across brokers that retry, exactly once within the in-memory broker. Events published while a
  subscriber was away are recovered with :meth:`Broker.history` from its last position.
* **Retention.** A stream keeps a bounded tail (by length and, where supported, by age). ``history``
  from a position older than that tail, or from another epoch, raises :class:`PositionExpired`: the
  caller must resync from a snapshot; it never receives a partial replay.
* **Idempotent publish.** ``publish(..., dedupe=(key, version))`` appends only if ``version`` is greater
  than the last version appended under ``key`` on that stream, and returns None otherwise. A relay that
  republishes after a crash, or two relays racing, therefore never append one change twice (as long as
  the broker keeps its state; a broker that lost it starts a new epoch, and clients resync anyway).
* **Subscriptions.** ``subscribe`` takes effect when it is called and delivers every publication
  appended after that; a remote broker may also deliver a few from just before (callers drop those by
  offset). A handler that raises is logged and does not stop the others. A remote broker reads with its
  own reader, which may lag: callers that need "history then live without a gap" take the
  live feed first, read ``history`` and drop live publications at or below the last replayed offset.
  When a broker notices that a stream's epoch changed under a live subscription (the stream was lost),
  the next publication it delivers carries the new epoch; the subscriber must treat that as a gap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
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


# What publish_many takes: (stream, data, dedupe) as publish's arguments.
PublishItem = tuple[str, bytes, tuple[str, int] | None]


class BrokerError(Exception):
    """Base of broker failures."""


class BrokerUnavailable(BrokerError):
    """The broker could not be reached (or did not answer in time); the operation may be retried."""


class PublishIncomplete(BrokerError):
    """:meth:`Broker.publish_many` stopped at a failure (``cause``, also its ``__cause__``): the positions
    of the leading items known appended are ``published``."""

    def __init__(self, published: list[Position | None], cause: BaseException) -> None:
        super().__init__(f"published {len(published)} before failing: {cause}")
        self.published = published
        self.cause = cause


class PositionExpired(BrokerError):
    """The position is older than the stream's retention or belongs to another epoch."""

    def __init__(self, stream: str, position: Position, current: Position | None) -> None:
        super().__init__(f"position {position} of {stream} can no longer be resumed")
        self.stream = stream
        self.position = position
        self.current = current


Handler = Callable[[Publication], None]

_log = logging.getLogger(__name__)


def deliver(handlers: Iterable[Handler], publication: Publication) -> None:
    """Hand ``publication`` to each handler (a snapshot of ``handlers``: one may unsubscribe meanwhile);
    one that raises is logged and the others still get it."""
    for handler in list(handlers):
        try:
            handler(publication)
        except Exception:
            _log.exception("a subscriber of %s failed on %s", publication.stream, publication.position)


class Broker(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def publish(
        self, stream: str, data: bytes, *, dedupe: tuple[str, int] | None = None
    ) -> Position | None:
        """Append ``data``; return its position, or None if ``dedupe`` showed it was already appended
        (a version <= 0 always counts as appended)."""
        ...

    async def publish_many(self, items: Sequence[PublishItem]) -> list[Position | None]:
        """:meth:`publish` each ``(stream, data, dedupe)`` in order, as many calls one after another
        would — the same positions, the same dedupe, within the batch too — in one exchange with the
        broker where it can. A failure raises :class:`PublishIncomplete`: its ``published`` items are
        known appended, and of the rest, a prefix of each stream's items may have been (streams on
        other Redis Cluster nodes or NATS chains go at once); publish them again (dedupe keeps each
        appended once)."""
        ...

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
