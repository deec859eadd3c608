"""Live stock: the snapshot, then every change, each applied once.

``Inventory`` subscribes to ``inventory:{region}`` (or one product's channel) first and reads the
snapshot (``GET /api/v1/inventory``) second, so that nothing committed in between is missed; it keeps,
per (product, warehouse), the highest version applied and ignores an event or a snapshot row with a
lower or equal one (docs/protocol.md, Events). That makes the handover, the hub's at-least-once
redelivery and a resync harmless: the app's ``changes()`` see each version of a row at most once, in
increasing order. A resync reads the snapshot again and continues from its position.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from synchub_client.client import Client, Subscription
from synchub_client.errors import HttpError
from synchub_client.events import Ended, Event, Item, Resync


@dataclass(frozen=True, slots=True)
class StockLevel:
    """One stock row (a product in a warehouse) as of its ``version``."""

    product_id: str
    warehouse_id: str
    sku: str | None
    region: str | None
    on_hand: int
    reserved: int
    available: int
    status: str | None
    version: int
    ts: int | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.product_id, self.warehouse_id)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> StockLevel:
        on_hand = int(data.get("on_hand", 0))
        reserved = int(data.get("reserved", 0))
        return cls(
            product_id=str(data["product_id"]),
            warehouse_id=str(data["warehouse_id"]),
            sku=data.get("sku"),
            region=data.get("region"),
            on_hand=on_hand,
            reserved=reserved,
            available=int(data.get("available", on_hand - reserved)),
            status=data.get("status"),
            version=int(data["version"]),
            ts=data.get("ts"),
        )


@dataclass(frozen=True, slots=True)
class StockChange:
    """A row moved to a newer version: from the live stream (``source="event"``) or a snapshot."""

    level: StockLevel
    previous: StockLevel | None
    source: str  # "event" or "snapshot"


class Inventory:
    """Stock of a region (or of one product), kept current."""

    def __init__(self, client: Client, region: str, product_id: str | None = None) -> None:
        self.client = client
        self.region = region
        self.product_id = product_id
        self.channel = f"inventory:{region}" + (f":{product_id}" if product_id else "")
        self.levels: dict[tuple[str, str], StockLevel] = {}
        self.snapshots = 0
        self.duplicates = 0  # events and rows ignored by version
        self.listeners: list[Callable[[StockChange], None]] = []
        self._queue: asyncio.Queue[StockChange | Ended] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._loaded = asyncio.Event()

    async def start(self) -> None:
        """Subscribe, then read the snapshot; returns once both are done (the client must be started)."""
        self._sub = self.client.subscribe(self.channel, on_resync=self._resync)
        self._sub.listeners.append(self._on_item)
        await self._sub.ready.wait()
        if self._sub.ended is not None and self._sub.ended.error is not None:
            raise self._sub.ended.error
        await self._load_snapshot()
        self._loaded.set()

    async def stop(self) -> None:
        if self._sub is not None:
            await self.client.unsubscribe(self._sub)

    def get(self, product_id: str, warehouse_id: str) -> StockLevel | None:
        return self.levels.get((product_id, warehouse_id))

    def available(self, product_id: str) -> int:
        """Units available across the warehouses known for ``product_id``."""
        return sum(level.available for level in self.levels.values() if level.product_id == product_id)

    async def changes(self) -> AsyncIterator[StockChange]:
        """Every applied change, in order; ends when the subscription does (raising its error)."""
        while True:
            item = await self._queue.get()
            if isinstance(item, Ended):
                if item.error is not None:
                    raise item.error
                return
            yield item

    async def next_change(self, timeout: float | None = None) -> StockChange:
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if isinstance(item, Ended):
            raise item.error or EOFError("the inventory subscription ended")
        return item

    def apply(self, data: dict[str, Any], source: str) -> StockChange | None:
        level = StockLevel.from_wire(data)
        previous = self.levels.get(level.key)
        if previous is not None and previous.version >= level.version:
            self.duplicates += 1
            return None
        self.levels[level.key] = level
        change = StockChange(level, previous, source)
        self._queue.put_nowait(change)
        for listener in list(self.listeners):
            listener(change)
        return change

    def _on_item(self, item: Item) -> None:
        if isinstance(item, Event):
            if "product_id" in item.data and "warehouse_id" in item.data:
                self.apply(item.data, "event")
        elif isinstance(item, Ended):
            self._queue.put_nowait(item)

    async def _load_snapshot(self) -> str | None:
        params = {"region": self.region}
        if self.product_id:
            params["product_id"] = self.product_id
        status, body = await self.client.http("GET", "/api/v1/inventory", params=params)
        if status != 200:
            raise HttpError(status, body)
        self.snapshots += 1
        for row in body.get("items", []):
            self.apply(row, "snapshot")
        position = body.get("position")
        return str(position) if position else None

    async def _resync(self, resync: Resync) -> str | None:
        return await self._load_snapshot() or resync.position
