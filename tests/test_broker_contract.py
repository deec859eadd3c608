"""One conformance suite for every Broker implementation (sync/broker.py states the guarantees)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sync.broker import Broker, Position, PositionExpired, Publication
from sync.broker_memory import MemoryBroker


def memory_broker() -> Broker:
    return MemoryBroker(max_len=5)


FACTORIES = {"memory": memory_broker}


@pytest.fixture(params=sorted(FACTORIES))
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    b = FACTORIES[request.param]()
    await b.start()
    yield b
    await b.stop()


async def test_positions_grow_strictly_within_one_epoch(broker: Broker) -> None:
    first = await broker.publish("inventory.eu", b"1")
    second = await broker.publish("inventory.eu", b"2")
    assert first.epoch == second.epoch
    assert second.offset > first.offset
    assert await broker.top("inventory.eu") == second


async def test_subscribers_see_every_publication_in_order(broker: Broker) -> None:
    seen: list[Publication] = []
    unsubscribe = broker.subscribe("inventory.eu", seen.append)
    for i in range(4):
        await broker.publish("inventory.eu", str(i).encode())
    await broker.publish("inventory.us", b"elsewhere")
    unsubscribe()
    await broker.publish("inventory.eu", b"after")
    assert [p.data for p in seen] == [b"0", b"1", b"2", b"3"]
    assert [p.position.offset for p in seen] == sorted(p.position.offset for p in seen)


async def test_history_replays_what_came_after_a_position(broker: Broker) -> None:
    positions = [await broker.publish("s", str(i).encode()) for i in range(4)]
    replay = await broker.history("s", positions[1])
    assert [p.data for p in replay] == [b"2", b"3"]
    assert await broker.history("s", positions[-1]) == []


async def test_history_of_an_empty_stream_from_its_top_is_empty(broker: Broker) -> None:
    top = await broker.top("empty")
    assert await broker.history("empty", top) == []


async def test_a_position_older_than_retention_must_resync(broker: Broker) -> None:
    first = await broker.publish("s", b"0")
    for i in range(10):  # retention in this suite is 5 publications
        await broker.publish("s", str(i).encode())
    with pytest.raises(PositionExpired) as caught:
        await broker.history("s", first)
    assert caught.value.current == await broker.top("s")


async def test_a_position_from_another_epoch_must_resync(broker: Broker) -> None:
    here = await broker.publish("s", b"0")
    with pytest.raises(PositionExpired):
        await broker.history("s", Position("another-epoch", here.offset))


async def test_a_position_from_the_future_must_resync(broker: Broker) -> None:
    here = await broker.publish("s", b"0")
    with pytest.raises(PositionExpired):
        await broker.history("s", Position(here.epoch, here.offset + 100))


async def test_a_restarted_memory_broker_is_a_new_epoch() -> None:
    before = await MemoryBroker().publish("s", b"x")
    after = await MemoryBroker().publish("s", b"x")
    assert before.epoch != after.epoch
