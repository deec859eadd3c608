"""The outbox relay: moves committed changes (stock, carts, users' events) from the store's outbox to
the broker, each to its entry's stream.

Two paths lead to the broker. **Handed over**: where this process is the database's only writer (the
embedded store), the store hands the relay each entry as its transaction commits (``outbox_committed``)
and the relay publishes it at once, in the committing task unless earlier entries are still being
published — no read of the outbox, no wait for the store's lock, and no task switch between a commit
and its publication. **Swept**: every ``sweep_interval``, and at once when the store says
``outbox_changed`` (PostgreSQL, where only reading puts concurrent commits in order), the relay reads
the outbox in ``seq`` order and publishes what it has not published itself: entries committed by other
processes, left by a crash, or whose handed-over publish failed.

Delivery is at least once: an entry is acknowledged (deleted) only after the broker accepted it, so a
crash between the two republishes it. Acknowledgements are batched — one write per sweep, not one per
commit — so a crash republishes at most a sweep's worth, and relays on other nodes may publish an entry
this one has published but not yet acknowledged. Both are harmless: the broker appends an entry only
if its ``version`` is newer than the last appended under its ``key`` (``dedupe``: a product ×
warehouse, a cart, a user), so a stream carries each change once and, per key, in version order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from sync.broker import Broker, PublishIncomplete

log = logging.getLogger(__name__)

_PUBLISH_BATCH = 100  # outbox entries a sweep publishes in one exchange with the broker


class OutboxItem(Protocol):
    """One committed change, as the store's outbox holds it: published to ``stream`` as ``payload``
    (encoded once, when it was written), appended once per (``key``, ``version``)."""

    @property
    def seq(self) -> int: ...
    @property
    def stream(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def payload(self) -> bytes: ...


class OutboxSource(Protocol):
    async def read_outbox(self, limit: int = 500) -> Sequence[OutboxItem]: ...
    async def ack_outbox(self, seqs: Sequence[int]) -> None: ...
    async def outbox_backlog(self) -> tuple[int, int | None]: ...


class OutboxRelay:
    """Implements the store's outbox listener (``outbox_committed``, ``outbox_changed``)."""

    def __init__(
        self,
        source: OutboxSource,
        broker: Broker,
        *,
        batch_size: int = 500,
        sweep_interval: float = 0.05,
        max_handed: int = 10_000,
        on_backlog: Callable[[int, float], None] | None = None,
    ) -> None:
        self._source = source
        self._broker = broker
        self._batch_size = batch_size
        self._sweep_interval = sweep_interval
        self._max_handed = max_handed
        self._on_backlog = on_backlog
        self._handed: deque[OutboxItem] = deque()
        self._handed_waiting = asyncio.Event()
        self._draining = False  # one task at a time publishes the handed-over entries, in order
        self._publishing: int | None = None  # the seq of the handed-over entry being published
        self._published: set[int] = set()  # published, not yet acknowledged: the sweep skips these
        self._sweep_due = asyncio.Event()
        # Set when handed-over entries were left in the outbox (a publish failed, or too many waited):
        # until a sweep has published everything up to then, newer entries are left there too, so
        # that this process's changes still reach the broker in commit order.
        self._left_to_sweep = False
        self._times_left = 0  # tells a sweep whether entries were left to it after it read
        self._stopping = False
        self._backlog_observed_at = 0.0

    # -- the store's listener --------------------------------------------------------------------
    async def outbox_committed(self, entries: Sequence[OutboxItem]) -> None:
        """Publish these just-committed entries: here, in the committing task, when nothing handed
        over earlier is still waiting (an in-process broker has then queued their fan-out before the
        writer resumes — a loop turn sooner than from the relay's task); else after those, from the
        relay's task."""
        if self._left_to_sweep or len(self._handed) + len(entries) > self._max_handed:
            # Too many waiting means the broker is not keeping up: the sweep reads them from the outbox
            # in outbox order, without holding them all in memory.
            self._leave_to_sweep()
            return
        self._handed.extend(entries)
        if self._draining or self._stopping:
            self._handed_waiting.set()
            return
        await self._drain_handed()

    def _leave_to_sweep(self) -> None:
        self._left_to_sweep = True
        self._times_left += 1
        self._handed.clear()
        self._sweep_due.set()

    def outbox_changed(self) -> None:
        """Sweep now: entries were committed that were not handed over."""
        self._sweep_due.set()

    # -- the sweep ----------------------------------------------------------------------------------
    async def relay_once(self) -> int:
        """Sweep once: read a batch of the outbox, publish the entries this relay has not published
        already, and acknowledge every entry published so far. Return how many this sweep published."""
        await self._acknowledge()  # the handed-over publications since the last sweep, before reading
        times_left = self._times_left
        entries = await self._source.read_outbox(self._batch_size)
        # Read after the awaits: an entry handed over meanwhile is in one of these.
        skip = self._published | {entry.seq for entry in self._handed}
        if self._publishing is not None:
            skip.add(self._publishing)
        moved = 0
        try:
            pending = [entry for entry in entries if entry.seq not in skip]
            for start in range(0, len(pending), _PUBLISH_BATCH):
                # One exchange with the broker per batch, in outbox order (Broker.publish_many); a batch
                # that fails is published again by a later sweep, and dedupe appends each entry once.
                chunk = pending[start : start + _PUBLISH_BATCH]
                try:
                    await self._broker.publish_many(
                        [(entry.stream, entry.payload, (entry.key, entry.version)) for entry in chunk]
                    )
                except PublishIncomplete as exc:
                    # What is known to have reached the broker is acknowledged below all the same.
                    self._published.update(entry.seq for entry in chunk[: len(exc.published)])
                    raise exc.cause from None  # the failure itself, as a lone publish raised it
                self._published.update(entry.seq for entry in chunk)
                moved += len(chunk)
            if len(entries) < self._batch_size and self._times_left == times_left:
                # Everything left to the sweep was in the outbox this one read, and is published:
                # handing over can resume without overtaking an older entry.
                self._left_to_sweep = False
        finally:
            # Acknowledge what did reach the broker even if a later publish failed.
            await self._acknowledge()
        return moved

    async def _acknowledge(self) -> None:
        if not self._published:
            return
        seqs = sorted(self._published)
        await self._source.ack_outbox(seqs)
        self._published.difference_update(seqs)  # not clear(): more may have been published meanwhile

    async def _publish(self, entry: OutboxItem) -> None:
        await self._broker.publish(entry.stream, entry.payload, dedupe=(entry.key, entry.version))

    # -- running ----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Publish handed-over entries and sweep until :meth:`stop`; then publish what was handed over
        before it and acknowledge everything published."""
        handed = asyncio.create_task(self._publish_handed(), name="outbox-relay-handed")
        try:
            await self._sweep_until_stopped()
            await handed
            try:
                await self._acknowledge()
            except Exception:
                log.warning("final outbox acknowledgement failed; those entries will be republished")
        finally:
            handed.cancel()

    async def _publish_handed(self) -> None:
        while True:
            if not self._draining:  # else the task draining will reach what was added meanwhile
                await self._drain_handed()
            if self._stopping and not self._handed and not self._draining:
                return
            self._handed_waiting.clear()
            await self._handed_waiting.wait()

    async def _drain_handed(self) -> None:
        self._draining = True
        try:
            while self._handed:
                entry = self._handed.popleft()
                self._publishing = entry.seq
                try:
                    await self._publish(entry)
                except Exception:
                    log.exception("publishing a committed change failed; the sweep will retry it")
                    # This entry and those handed after it stay in the outbox; the sweep publishes
                    # them in outbox order.
                    self._leave_to_sweep()
                except BaseException:  # the committing task was cancelled during a remote publish
                    self._leave_to_sweep()
                    raise
                else:
                    self._published.add(entry.seq)
                finally:
                    self._publishing = None
        finally:
            self._draining = False
            if self._stopping:  # run() waits in _publish_handed for the last drain to end
                self._handed_waiting.set()

    async def _sweep_until_stopped(self) -> None:
        while not self._stopping:
            # Cleared before reading, so an outbox_changed that arrives during a sweep is kept and the
            # next sweep starts at once.
            self._sweep_due.clear()
            try:
                moved = await self.relay_once()
                await self._observe_backlog()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying")
                moved = 0
                await asyncio.sleep(1.0)
            if moved < self._batch_size and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._sweep_due.wait(), self._sweep_interval)

    async def _observe_backlog(self) -> None:
        # A metric, not a control signal: once a second is plenty, and it keeps a query off the hot path.
        if self._on_backlog is None or time.monotonic() - self._backlog_observed_at < 1.0:
            return
        self._backlog_observed_at = time.monotonic()
        count, oldest = await self._source.outbox_backlog()
        lag = 0.0 if oldest is None else max(0.0, time.time() - oldest / 1e6)
        self._on_backlog(count, lag)

    def stop(self) -> None:
        """Ask :meth:`run` to finish: it stops sweeping, publishes what was already handed over and
        acknowledges what it published."""
        self._stopping = True
        self._sweep_due.set()
        self._handed_waiting.set()
