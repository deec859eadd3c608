"""The outbox relay: moves committed stock changes from the store's outbox to the broker.

Delivery is at least once: an entry is acknowledged (deleted) only after the broker accepted it, so a
crash between the two republishes it. Entries are published in outbox order, which for one
product × warehouse is version order; consumers drop a duplicate by its ``version``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from sync.broker import Broker
from sync.channels import inventory_stream

log = logging.getLogger(__name__)


class OutboxDelta(Protocol):
    @property
    def region(self) -> str: ...
    @property
    def product_id(self) -> str: ...
    @property
    def warehouse_id(self) -> str: ...
    @property
    def version(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


class OutboxItem(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def delta(self) -> OutboxDelta: ...


class OutboxSource(Protocol):
    async def read_outbox(self, limit: int = 500) -> Sequence[OutboxItem]: ...
    async def ack_outbox(self, seqs: Sequence[int]) -> None: ...
    async def outbox_backlog(self) -> tuple[int, int | None]: ...


class OutboxRelay:
    def __init__(
        self,
        source: OutboxSource,
        broker: Broker,
        *,
        batch_size: int = 500,
        idle_interval: float = 0.05,
        on_backlog: Callable[[int, float], None] | None = None,
    ) -> None:
        self._source = source
        self._broker = broker
        self._batch_size = batch_size
        self._idle_interval = idle_interval
        self._on_backlog = on_backlog
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._backlog_observed_at = 0.0

    def notify(self) -> None:
        """Tell the relay that new entries were committed, so it need not wait for its next poll."""
        self._wakeup.set()

    async def relay_once(self) -> int:
        """Publish and acknowledge one batch; return how many entries it moved."""
        entries = await self._source.read_outbox(self._batch_size)
        published: list[int] = []
        try:
            for entry in entries:
                delta = entry.delta
                await self._broker.publish(
                    inventory_stream(delta.region),
                    orjson.dumps(delta.to_dict()),
                    dedupe=(f"{delta.product_id}/{delta.warehouse_id}", delta.version),
                )
                published.append(entry.seq)
        finally:
            # Acknowledge what did reach the broker even if a later publish failed.
            await self._source.ack_outbox(published)
        return len(published)

    async def run(self) -> None:
        while not self._stopping:
            # Cleared before reading, so a notify that arrives while a batch is being moved is kept
            # and the next batch starts at once.
            self._wakeup.clear()
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
                    await asyncio.wait_for(self._wakeup.wait(), self._idle_interval)

    async def _observe_backlog(self) -> None:
        # A metric, not a control signal: once a second is plenty, and it keeps a query off the hot path.
        if self._on_backlog is None or time.monotonic() - self._backlog_observed_at < 1.0:
            return
        self._backlog_observed_at = time.monotonic()
        count, oldest = await self._source.outbox_backlog()
        lag = 0.0 if oldest is None else max(0.0, time.time() - oldest / 1e6)
        self._on_backlog(count, lag)

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
