"""The outbox relay moves every committed stock change to the broker, at least once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import orjson
import pytest

from storage.models import OutboxEntry
from storage.sql import SqlStore
from sync.broker import Position, Publication
from sync.broker_memory import MemoryBroker
from sync.channels import inventory_stream
from sync.relay import OutboxRelay
from tests.conftest import seed


class BrokerDown(Exception):
    pass


class FlakyBroker(MemoryBroker):
    """A memory broker that refuses publishes after ``fail_after`` successes, until healed."""

    def __init__(self, fail_after: int) -> None:
        super().__init__()
        self.fail_after = fail_after

    async def publish(
        self, stream: str, data: bytes, *, dedupe: tuple[str, int] | None = None
    ) -> Position | None:
        if self.fail_after <= 0:
            raise BrokerDown("broker unavailable")
        self.fail_after -= 1
        return await super().publish(stream, data, dedupe=dedupe)


class UnacknowledgingSource:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    async def read_outbox(self, limit: int = 500) -> list[OutboxEntry]:
        return await self.store.read_outbox(limit)

    async def ack_outbox(self, seqs: Sequence[int]) -> None:
        return None

    async def outbox_backlog(self) -> tuple[int, int | None]:
        return await self.store.outbox_backlog()


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


async def test_a_crash_after_publish_before_ack_republishes_and_the_broker_drops_the_duplicates(
    store: SqlStore,
) -> None:
    product_id = await seed(store, stock={"par-1": 3})
    await store.adjust_stock(product_id, "par-1", 1)
    broker = MemoryBroker()
    seen = collect(broker, inventory_stream("eu"))
    # A relay whose acknowledgements never happen: it died between publishing and acknowledging.
    first_relay = OutboxRelay(UnacknowledgingSource(store), broker)
    assert await first_relay.relay_once() == 2
    assert (await store.outbox_backlog())[0] == 2  # still there: never acknowledged
    await OutboxRelay(store, broker).relay_once()  # the next relay republishes both
    assert [e["version"] for e in seen] == [1, 2]  # ...and the broker appended each once
    assert (await store.outbox_backlog())[0] == 0


# -- handing over: the embedded store tells the relay of each commit -----------------------------------


class CountingSource:
    """The store as the relay's source, counting the relay's reads of the outbox."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.reads = 0

    async def read_outbox(self, limit: int = 500) -> list[OutboxEntry]:
        self.reads += 1
        return await self.store.read_outbox(limit)

    async def ack_outbox(self, seqs: Sequence[int]) -> None:
        await self.store.ack_outbox(seqs)

    async def outbox_backlog(self) -> tuple[int, int | None]:
        return await self.store.outbox_backlog()


class SlowBroker(MemoryBroker):
    """A memory broker that takes a while to accept a publish, as a remote one does."""

    async def publish(
        self, stream: str, data: bytes, *, dedupe: tuple[str, int] | None = None
    ) -> Position | None:
        await asyncio.sleep(0.05)
        return await super().publish(stream, data, dedupe=dedupe)


@asynccontextmanager
async def running(relay: OutboxRelay, store: SqlStore) -> AsyncIterator[None]:
    unwatch = store.watch_outbox(relay)
    task = asyncio.create_task(relay.run())
    try:
        yield
    finally:
        unwatch()
        relay.stop()
        await asyncio.wait_for(task, timeout=5.0)


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while True:
            outcome = condition()
            if outcome if isinstance(outcome, bool) else await outcome:
                return
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


async def backlog_is_empty(store: SqlStore) -> bool:
    return (await store.outbox_backlog())[0] == 0


async def test_a_handed_over_change_is_published_without_reading_the_outbox(embedded: SqlStore) -> None:
    product_id = await seed(embedded, stock={"par-1": 1})
    broker = MemoryBroker()
    seen = collect(broker, inventory_stream("eu"))
    source = CountingSource(embedded)
    # Its one sweep is the first thing run does: after that only a handover can bring a change in time.
    relay = OutboxRelay(source, broker, sweep_interval=30.0)
    async with running(relay, embedded):
        await until(lambda: len(seen) == 1)  # the seed's entry, found by that sweep
        for _ in range(20):
            await embedded.adjust_stock(product_id, "par-1", 1)
        await until(lambda: len(seen) == 21)
        assert source.reads == 1
        # Published, not yet acknowledged: the next sweep acknowledges them and publishes none again.
        assert (await embedded.outbox_backlog())[0] == 20
        relay.outbox_changed()
        await until(lambda: source.reads == 2)
        await until(lambda: backlog_is_empty(embedded))
    assert [e["version"] for e in seen] == list(range(1, 22))


async def test_after_a_failed_handover_the_sweep_publishes_in_commit_order_then_handing_over_resumes(
    embedded: SqlStore,
) -> None:
    product_id = await seed(embedded, stock={"par-1": 1})
    broker = FlakyBroker(fail_after=3)
    seen = collect(broker, inventory_stream("eu"))
    source = CountingSource(embedded)
    relay = OutboxRelay(source, broker, sweep_interval=30.0)
    async with running(relay, embedded):
        await until(lambda: len(seen) == 1)
        for _ in range(10):  # the third of these fails to publish; the sweep fails too while it is down
            await embedded.adjust_stock(product_id, "par-1", 1)
            await asyncio.sleep(0.01)
        assert [e["version"] for e in seen] == [1, 2, 3]
        broker.fail_after = 1_000  # healed: the sweep retries after its pause
        await until(lambda: len(seen) == 11)
        # Every change, each once, in commit order: nothing handed over after the failure overtook
        # the entries left to the sweep (the broker would have dropped those as older).
        assert [e["version"] for e in seen] == list(range(1, 12))
        reads = source.reads
        await embedded.adjust_stock(product_id, "par-1", 1)
        await until(lambda: len(seen) == 12)
        assert source.reads == reads  # handed over again, not swept
    assert await backlog_is_empty(embedded)


async def committed_unannounced(store: SqlStore, product_id: str, count: int) -> list[OutboxEntry]:
    """``count`` changes committed without telling anyone: the relay is then told of them by hand, as
    concurrently as the listener contract allows."""
    for _ in range(count):
        await store.adjust_stock(product_id, "par-1", 1)
    return (await store.read_outbox(limit=10_000))[-count:]


async def test_when_too_many_wait_to_be_handed_over_the_sweep_takes_them_in_order(embedded: SqlStore) -> None:
    product_id = await seed(embedded, stock={"par-1": 1})
    broker = SlowBroker()
    seen = collect(broker, inventory_stream("eu"))
    relay = OutboxRelay(embedded, broker, sweep_interval=30.0, max_handed=3)
    task = asyncio.create_task(relay.run())
    try:
        await until(lambda: len(seen) == 1)
        entries = await committed_unannounced(embedded, product_id, 6)
        # The first is published slowly; three wait behind it; the fifth would make four: those waiting
        # and all after are left to the sweep, which reads them back in outbox order.
        await asyncio.gather(*(relay.outbox_committed([entry]) for entry in entries))
        await until(lambda: len(seen) == 7)
    finally:
        relay.stop()
        await asyncio.wait_for(task, 5.0)
    assert [e["version"] for e in seen] == list(range(1, 8))
    assert await backlog_is_empty(embedded)


async def test_a_handed_over_change_reaches_an_in_process_broker_before_the_write_returns(
    embedded: SqlStore,
) -> None:
    product_id = await seed(embedded, stock={"par-1": 1})
    broker = MemoryBroker()
    seen = collect(broker, inventory_stream("eu"))
    relay = OutboxRelay(embedded, broker, sweep_interval=30.0)
    async with running(relay, embedded):
        await until(lambda: len(seen) == 1)
        await embedded.adjust_stock(product_id, "par-1", 1)
        assert [e["version"] for e in seen] == [1, 2]  # no loop turn given to the relay's task


async def test_stopping_publishes_what_was_handed_over_in_order_and_acknowledges_it(
    embedded: SqlStore,
) -> None:
    product_id = await seed(embedded, stock={"par-1": 1})
    broker = SlowBroker()
    seen = collect(broker, inventory_stream("eu"))
    relay = OutboxRelay(embedded, broker, sweep_interval=30.0)
    task = asyncio.create_task(relay.run())
    await until(lambda: len(seen) == 1)
    entries = await committed_unannounced(embedded, product_id, 3)
    # The first is published (slowly) in its caller's task; the others wait behind it.
    told = [asyncio.create_task(relay.outbox_committed([entry])) for entry in entries]
    await until(lambda: sum(t.done() for t in told) == 2)
    relay.stop()
    await asyncio.wait_for(task, 5.0)
    await asyncio.gather(*told)
    assert [e["version"] for e in seen] == [1, 2, 3, 4]
    assert await backlog_is_empty(embedded)


async def test_relays_on_several_nodes_racing_over_one_outbox_append_each_change_once_in_order(
    store: SqlStore,
) -> None:
    """The hub's answer to "only one relay at a time, or idempotent relays": every node relays, and the
    broker's idempotent publish (dedupe by product/warehouse version) makes the race harmless."""
    import os
    import secrets

    from sync.broker_redis import RedisBroker

    product_ids = [await seed(store, f"RACE-{i}", {"par-1": 1}) for i in range(3)]
    prefix = os.environ.get("SYNCHUB_TEST_REDIS_PREFIX", "synchub_test:") + f"race-{secrets.token_hex(4)}:"
    url = os.environ.get("SYNCHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    brokers = [RedisBroker(url, prefix=prefix, max_len=10_000) for _ in range(3)]  # three "nodes"
    for broker in brokers:
        await broker.start()
    try:

        async def writer() -> None:
            for n in range(60):
                await store.adjust_stock(product_ids[n % 3], "par-1", 1)

        async def relay_until(done: asyncio.Event, broker: RedisBroker) -> None:
            relay = OutboxRelay(store, broker, batch_size=7)
            while not done.is_set() or (await store.outbox_backlog())[0]:
                await relay.relay_once()
                await asyncio.sleep(0)

        done = asyncio.Event()
        relays = [asyncio.create_task(relay_until(done, broker)) for broker in brokers]
        await writer()
        done.set()
        await asyncio.wait_for(asyncio.gather(*relays), 30)
        stream = inventory_stream("eu")
        history = await brokers[0].history(stream, Position((await brokers[0].top(stream)).epoch, 0))
        versions: dict[str, list[int]] = {}
        for publication in history:
            event = orjson.loads(publication.data)
            versions.setdefault(event["product_id"], []).append(event["version"])
        assert versions == {pid: list(range(1, 22)) for pid in product_ids}
    finally:
        for broker in brokers:
            await broker.stop()
        import redis.asyncio as aioredis

        client = aioredis.from_url(url)
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_on_postgresql_an_acknowledgement_skips_the_entries_another_relay_is_deleting(pg: str) -> None:
    """Every node's relay acknowledges what it published, and they publish the same entries: one
    acknowledgement must not wait for another's rows. (Two that did, locking rows in different orders,
    deadlocked — each time the relays stood still for PostgreSQL's deadlock_timeout, 1 s.) An entry it
    skipped stays if the other deletion rolls back, for a later sweep to publish and acknowledge."""
    import asyncpg

    from storage.factory import open_store

    store = open_store(pg)
    await store.open()
    await store.migrate()
    other = await asyncpg.connect(pg)
    try:
        product_id = await seed(store, stock={"par-1": 1})
        for _ in range(3):
            await store.adjust_stock(product_id, "par-1", 1)
        entries = await store.read_outbox()
        assert len(entries) == 4
        held = entries[1].seq
        rival = other.transaction()  # another relay's acknowledgement, not committed yet
        await rival.start()
        await other.execute("DELETE FROM outbox WHERE seq = $1", held)
        await asyncio.wait_for(store.ack_outbox([e.seq for e in entries]), 5)
        await rival.rollback()
        assert [e.seq for e in await store.read_outbox()] == [held]
    finally:
        await other.close()
        await store.close()
