"""One conformance suite for every Broker implementation (sync/broker.py states the guarantees).

Every test runs on the in-memory broker, on the Redis broker (the real server in
SYNCHUB_TEST_REDIS_URL, its keys under a prefix of its own that is deleted afterwards) and on the Redis
broker over a local Redis Cluster of 3 masters and 3 replicas (the ``redis_cluster`` fixture starts it). Delivery to
subscribers is synchronous in memory and goes through a reader task with Redis, so tests wait for it
(and wait a little before asserting that something was not delivered).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import nats
import pytest

from bench.redis_cluster import LocalCluster
from sync.broker import Broker, BrokerUnavailable, Position, PositionExpired, Publication, PublishIncomplete
from sync.broker_memory import MemoryBroker
from sync.broker_nats import NatsBroker
from sync.broker_redis import RedisBroker
from tests.conftest import delete_redis_keys, fresh_redis_prefix, redis_url

RETENTION = 5  # max_len of every broker in this suite


@asynccontextmanager
async def redis_broker(
    *,
    max_len: int = 10_000,
    max_age_seconds: float | None = 3600,
    block_ms: int = 5000,
    url: str | None = None,
) -> AsyncIterator[RedisBroker]:
    """A started RedisBroker under a fresh prefix; stopped, and its keys deleted, afterwards (on a
    cluster, ``url``, the keys go with the cluster at the end of the session)."""
    prefix = fresh_redis_prefix()
    broker = RedisBroker(
        url or redis_url(), prefix=prefix, max_len=max_len, max_age_seconds=max_age_seconds, block_ms=block_ms
    )
    try:
        await broker.start()
        yield broker
    finally:
        await broker.stop()
        if url is None:
            await delete_redis_keys(redis_url(), prefix)


@asynccontextmanager
async def memory_broker() -> AsyncIterator[Broker]:
    broker = MemoryBroker(max_len=RETENTION)
    await broker.start()
    yield broker
    await broker.stop()


def _redis() -> AbstractAsyncContextManager[Broker]:
    return redis_broker(max_len=RETENTION)


def nats_url() -> str:
    return os.environ.get("SYNCHUB_TEST_NATS_URL", "nats://127.0.0.1:4222")


@asynccontextmanager
async def nats_broker(*, max_len: int = 10_000, check_interval: float = 5.0) -> AsyncIterator[NatsBroker]:
    """A started NatsBroker under a fresh prefix (memory storage); its streams deleted afterwards."""
    prefix = f"synchub_test_{secrets.token_hex(4)}"
    broker = NatsBroker(
        f"{nats_url()}?storage=memory", prefix=prefix, max_len=max_len, check_interval=check_interval
    )
    try:
        try:
            await broker.start()
        except BrokerUnavailable as exc:
            pytest.fail(f"NATS JetStream is required at {nats_url()} (scripts/test starts it): {exc}")
        yield broker
    finally:
        await broker.stop()
        await delete_nats_streams(prefix)


async def delete_nats_streams(prefix: str) -> None:
    nc = await nats.connect(nats_url())
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(f"{prefix}_"):
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


def _redis_cluster(request: pytest.FixtureRequest) -> AbstractAsyncContextManager[Broker]:
    cluster: LocalCluster = request.getfixturevalue("redis_cluster")  # started for these tests only
    return redis_broker(max_len=RETENTION, url=cluster.url)


FACTORIES: dict[str, Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[Broker]]] = {
    "memory": lambda _: memory_broker(),
    "redis": lambda _: _redis(),
    "redis-cluster": _redis_cluster,
    "nats": lambda _: nats_broker(max_len=RETENTION),
}


@pytest.fixture(
    params=[
        pytest.param("memory"),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis),
        pytest.param("nats"),
    ]
)
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    async with FACTORIES[request.param](request) as b:
        yield b


class Inbox:
    """A subscriber that keeps what it receives and lets a test wait for it (delivery is immediate in
    memory, through a reader task with Redis)."""

    def __init__(self) -> None:
        self.received: list[Publication] = []
        self._arrived = asyncio.Event()

    def __call__(self, publication: Publication) -> None:
        self.received.append(publication)
        self._arrived.set()

    @property
    def data(self) -> list[bytes]:
        return [p.data for p in self.received]

    async def wait_for(self, count: int, seconds: float = 5.0) -> None:
        async with asyncio.timeout(seconds):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()

    async def settle(self) -> None:
        """Give a reader the time to deliver what it should not."""
        await asyncio.sleep(0.2)


async def publish(broker: Broker, stream: str, data: bytes) -> Position:
    position = await broker.publish(stream, data)
    assert position is not None
    return position


async def test_positions_grow_strictly_within_one_epoch(broker: Broker) -> None:
    first = await publish(broker, "inventory.eu", b"1")
    second = await publish(broker, "inventory.eu", b"2")
    assert first.epoch == second.epoch
    assert second.offset > first.offset
    assert await broker.top("inventory.eu") == second


async def test_the_top_of_an_empty_stream_is_a_stable_offset_zero(broker: Broker) -> None:
    top = await broker.top("empty")
    assert top.offset == 0
    assert await broker.top("empty") == top
    assert (await publish(broker, "empty", b"x")).epoch == top.epoch


async def test_subscribers_see_every_publication_in_order(broker: Broker) -> None:
    inbox = Inbox()
    unsubscribe = broker.subscribe("inventory.eu", inbox)
    positions = [await publish(broker, "inventory.eu", str(i).encode()) for i in range(4)]
    await broker.publish("inventory.us", b"elsewhere")
    await inbox.wait_for(4)
    unsubscribe()
    await broker.publish("inventory.eu", b"after")
    await inbox.settle()
    assert inbox.data == [b"0", b"1", b"2", b"3"]
    assert [p.position for p in inbox.received] == positions
    assert {p.stream for p in inbox.received} == {"inventory.eu"}


async def test_every_subscriber_of_a_stream_gets_each_publication_once(broker: Broker) -> None:
    first, second = Inbox(), Inbox()
    unsubscribe_first = broker.subscribe("s", first)
    unsubscribe_second = broker.subscribe("s", second)
    await broker.publish("s", b"both")
    await first.wait_for(1)
    await second.wait_for(1)
    unsubscribe_first()
    await broker.publish("s", b"second only")
    await second.wait_for(2)
    await second.settle()
    unsubscribe_second()
    assert first.data == [b"both"]
    assert second.data == [b"both", b"second only"]


async def test_history_replays_what_came_after_a_position(broker: Broker) -> None:
    positions = [await publish(broker, "s", str(i).encode()) for i in range(4)]
    replay = await broker.history("s", positions[1])
    assert [p.data for p in replay] == [b"2", b"3"]
    assert [p.position for p in replay] == positions[2:]
    assert await broker.history("s", positions[-1]) == []


async def test_history_pages_oldest_first_by_limit(broker: Broker) -> None:
    positions = [await publish(broker, "s", str(i).encode()) for i in range(5)]
    pages: list[list[bytes]] = []
    cursor = positions[0]
    while page := await broker.history("s", cursor, limit=2):
        pages.append([p.data for p in page])
        cursor = page[-1].position
    assert pages == [[b"1", b"2"], [b"3", b"4"]]
    assert [p.data for p in await broker.history("s", positions[0], limit=3)] == [b"1", b"2", b"3"]


async def test_history_of_an_empty_stream_from_its_top_is_empty(broker: Broker) -> None:
    top = await broker.top("empty")
    assert await broker.history("empty", top) == []


async def test_history_and_live_together_miss_nothing(broker: Broker) -> None:
    # The Protocol's recipe: take the live feed first, read history, drop live at or below it.
    since = await publish(broker, "s", b"0")
    live = Inbox()
    unsubscribe = broker.subscribe("s", live)
    await broker.publish("s", b"1")
    replayed = await broker.history("s", since)
    last = await publish(broker, "s", b"2")
    async with asyncio.timeout(5):
        while last not in [p.position for p in live.received]:
            await live.wait_for(len(live.received) + 1)
    unsubscribe()
    newest_replayed = replayed[-1].position.offset
    merged = replayed + [p for p in live.received if p.position.offset > newest_replayed]
    assert [p.data for p in merged] == [b"1", b"2"]


async def test_a_position_older_than_retention_must_resync(broker: Broker) -> None:
    first = await publish(broker, "s", b"0")
    for i in range(10):  # retention in this suite is 5 publications
        await broker.publish("s", str(i).encode())
    with pytest.raises(PositionExpired) as caught:
        await broker.history("s", first)
    assert caught.value.current == await broker.top("s")


async def test_positions_within_retention_still_resume(broker: Broker) -> None:
    positions = [await publish(broker, "s", str(i).encode()) for i in range(12)]
    oldest_resumable = positions[-1 - RETENTION]
    replay = await broker.history("s", oldest_resumable)
    assert [p.position for p in replay] == positions[-RETENTION:]
    with pytest.raises(PositionExpired):
        await broker.history("s", positions[-2 - RETENTION])


async def test_a_position_from_another_epoch_must_resync(broker: Broker) -> None:
    here = await publish(broker, "s", b"0")
    with pytest.raises(PositionExpired):
        await broker.history("s", Position("another-epoch", here.offset))


async def test_a_position_from_the_future_must_resync(broker: Broker) -> None:
    here = await publish(broker, "s", b"0")
    with pytest.raises(PositionExpired):
        await broker.history("s", Position(here.epoch, here.offset + 100))


async def test_a_duplicate_publish_appends_nothing(broker: Broker) -> None:
    first = await broker.publish("s", b"v3", dedupe=("p1/w1", 3))
    assert first is not None
    assert await broker.publish("s", b"v3 again", dedupe=("p1/w1", 3)) is None
    assert await broker.publish("s", b"v2 late", dedupe=("p1/w1", 2)) is None
    assert await broker.top("s") == first
    assert await broker.history("s", Position(first.epoch, first.offset - 1)) == [
        Publication("s", first, b"v3")
    ]


async def test_a_higher_version_is_appended(broker: Broker) -> None:
    inbox = Inbox()
    unsubscribe = broker.subscribe("s", inbox)
    first = await broker.publish("s", b"v1", dedupe=("p1/w1", 1))
    assert await broker.publish("s", b"v1 again", dedupe=("p1/w1", 1)) is None
    second = await broker.publish("s", b"v2", dedupe=("p1/w1", 2))
    assert first is not None and second is not None
    assert second.offset == first.offset + 1
    await inbox.wait_for(2)
    await inbox.settle()
    unsubscribe()
    assert inbox.data == [b"v1", b"v2"]


async def test_dedupe_keys_and_streams_are_independent(broker: Broker) -> None:
    assert await broker.publish("s", b"a", dedupe=("p1/w1", 5)) is not None
    assert await broker.publish("s", b"b", dedupe=("p2/w1", 1)) is not None
    assert await broker.publish("other", b"a", dedupe=("p1/w1", 5)) is not None
    assert await broker.publish("s", b"a", dedupe=("p1/w1", 5)) is None
    assert await broker.publish("s", b"plain") is not None  # no dedupe: always appended
    assert await broker.publish("s", b"plain") is not None
    assert (await broker.top("s")).offset == 4


async def test_dedupe_compares_versions_as_integers(broker: Broker) -> None:
    assert await broker.publish("s", b"9", dedupe=("k", 9)) is not None
    assert await broker.publish("s", b"10", dedupe=("k", 10)) is not None  # not "10" < "9"
    assert await broker.publish("s", b"big", dedupe=("k", 2**62)) is not None
    assert await broker.publish("s", b"big - 1", dedupe=("k", 2**62 - 1)) is None  # beyond a double
    assert await broker.publish("s", b"big + 1", dedupe=("k", 2**62 + 1)) is not None


async def test_a_restarted_memory_broker_is_a_new_epoch() -> None:
    before = await MemoryBroker().publish("s", b"x")
    after = await MemoryBroker().publish("s", b"x")
    assert before is not None and after is not None
    assert before.epoch != after.epoch


async def test_publish_many_is_publish_one_after_another_in_one_exchange(broker: Broker) -> None:
    inbox = Inbox()
    unsubscribe = broker.subscribe("s", inbox)
    before = await broker.publish("s", b"v1", dedupe=("k", 1))
    assert before is not None
    positions = await broker.publish_many(
        [
            ("s", b"v1 again", ("k", 1)),  # appended before the batch: dropped
            ("s", b"v2", ("k", 2)),
            ("s", b"v2 again", ("k", 2)),  # appended earlier in the batch: dropped
            ("t", b"other stream", ("k", 2)),  # another stream's dedupe is its own
            ("s", b"plain", None),
            ("s", b"v3", ("k", 3)),
        ]
    )
    assert positions[0] is None and positions[2] is None
    assert [p.offset if p is not None else None for p in positions] == [
        None,
        before.offset + 1,
        None,
        1,
        before.offset + 2,
        before.offset + 3,
    ]
    assert await broker.publish_many([]) == []
    await inbox.wait_for(4)
    await inbox.settle()
    unsubscribe()
    assert inbox.data == [b"v1", b"v2", b"plain", b"v3"]
    assert [p.data for p in await broker.history("s", before)] == [b"v2", b"plain", b"v3"]


async def test_publish_many_that_fails_says_which_leading_items_were_appended() -> None:
    class Refusing(MemoryBroker):
        async def publish(self, stream: str, data: bytes, *, dedupe: tuple[str, int] | None = None) -> Any:
            if data == b"bad":
                raise BrokerUnavailable("refused")
            return await super().publish(stream, data, dedupe=dedupe)

    broker = Refusing()
    with pytest.raises(PublishIncomplete) as failed:
        await broker.publish_many(
            [("s", b"a", None), ("s", b"b", None), ("s", b"bad", None), ("s", b"c", None)]
        )
    assert [p.offset for p in failed.value.published if p is not None] == [1, 2]
    assert isinstance(failed.value.cause, BrokerUnavailable)
    assert (await broker.top("s")).offset == 2  # nothing after the failure was appended
