"""The outbox relay moves every committed stock change to the broker, at least once, in order."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from storage.models import Warehouse
from storage.sql import SqlStore
from sync.broker import Position, Publication
from sync.broker_memory import MemoryBroker
from sync.relay import OutboxRelay, inventory_stream
from tests.conftest import seed


class BrokerDown(Exception):
    pass


class FlakyBroker(MemoryBroker):
    """A memory broker that refuses publishes after ``fail_after`` successes, until healed."""

    def __init__(self, fail_after: int) -> None:
        super().__init__()
        self.fail_after = fail_after

    async def publish(self, stream: str, data: bytes) -> Position:
        if self.fail_after <= 0:
            raise BrokerDown("broker unavailable")
        self.fail_after -= 1
        return await super().publish(stream, data)


def collect(broker: MemoryBroker, stream: str) -> list[dict]:
    seen: list[dict] = []

    def handler(publication: Publication) -> None:
        seen.append(orjson.loads(publication.data))

    broker.subscribe(stream, handler)
    return seen


async def test_every_stock_change_reaches_the_broker_in_version_order(store: SqlStore) -> None:
    product_id = await seed(store, stock={"par-1": 10, "lyon-1": 5})
    for delta in (1, 2, -3):
        await store.adjust_stock(product_id, "par-1", delta)
    broker = MemoryBroker()
    seen = collect(broker, inventory_stream("eu"))
    relay = OutboxRelay(store, broker)
    assert await relay.relay_once() == 5
    assert await relay.relay_once() == 0
    par = [e for e in seen if e["warehouse_id"] == "par-1"]
    assert [e["version"] for e in par] == [1, 2, 3, 4]
    assert [e["on_hand"] for e in par] == [10, 11, 13, 10]
    assert {e["region"] for e in seen} == {"eu"}
    assert await store.outbox_backlog() == (0, None)


async def test_a_broker_failure_loses_nothing_and_the_relay_resumes_in_order(store: SqlStore) -> None:
    product_id = await seed(store, stock={"par-1": 1})
    for _ in range(9):
        await store.adjust_stock(product_id, "par-1", 1)
    broker = FlakyBroker(fail_after=4)
    seen = collect(broker, inventory_stream("eu"))
    relay = OutboxRelay(store, broker)
    with pytest.raises(BrokerDown):
        await relay.relay_once()
    assert [e["version"] for e in seen] == [1, 2, 3, 4]
    assert (await store.outbox_backlog())[0] == 6  # what reached the broker was acknowledged
    broker.fail_after = 100
    assert await relay.relay_once() == 6
    assert [e["version"] for e in seen] == list(range(1, 11))


async def test_a_crash_after_publish_before_ack_republishes_and_versions_drop_the_duplicates(
    store: SqlStore,
) -> None:
    product_id = await seed(store, stock={"par-1": 3})
    await store.adjust_stock(product_id, "par-1", 1)
    broker = MemoryBroker()
    seen = collect(broker, inventory_stream("eu"))
    # Publish without acknowledging, as a relay that died between the two steps would have.
    for entry in await store.read_outbox():
        await broker.publish(inventory_stream(entry.delta.region), orjson.dumps(entry.delta.to_dict()))
    await OutboxRelay(store, broker).relay_once()
    assert [e["version"] for e in seen] == [1, 2, 1, 2]
    latest: dict[tuple[str, str], int] = {}
    applied = []
    for event in seen:  # the consumer's rule: apply an event only if its version is newer
        key = (event["product_id"], event["warehouse_id"])
        if event["version"] > latest.get(key, 0):
            latest[key] = event["version"]
            applied.append(event["version"])
    assert applied == [1, 2]


async def test_the_running_relay_delivers_a_change_as_soon_as_it_is_notified(store: SqlStore) -> None:
    product_id = await seed(store)
    await store.create_warehouse(Warehouse("par-1", "eu", "Paris"))
    broker = MemoryBroker()
    arrived = asyncio.Event()
    broker.subscribe(inventory_stream("eu"), lambda _p: arrived.set())
    relay = OutboxRelay(store, broker, idle_interval=30.0)  # only a notify can wake it in time
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.05)
        await store.set_stock(product_id, "par-1", 7)
        relay.notify()
        await asyncio.wait_for(arrived.wait(), timeout=2.0)
    finally:
        relay.stop()
        await asyncio.wait_for(task, timeout=2.0)
