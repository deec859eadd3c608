"""The sync engine's replay, unit-level over the in-memory broker (the transports test it end to end)."""

from __future__ import annotations

import orjson

from sync import engine as engine_module
from sync.broker import Position
from sync.broker_memory import MemoryBroker
from sync.channels import Channel, parse_channel
from sync.engine import SyncEngine
from sync.events import Event


class Collect:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def deliver(self, event: Event, channel: Channel) -> None:
        self.events.append(event)

    def resync(self, reason: str, current: Position, channels: tuple[Channel, ...]) -> None:
        raise AssertionError(f"unexpected resync: {reason}")


async def publish(broker: MemoryBroker, version: int) -> Position:
    data = orjson.dumps({"product_id": "p1", "region": "eu", "version": version})
    position = await broker.publish("inventory.eu", data)
    assert position is not None
    return position


async def test_clients_resuming_from_one_position_share_the_live_events_and_their_frames() -> None:
    broker = MemoryBroker()
    engine = SyncEngine(broker, "eu")
    await engine.start()
    start = await publish(broker, 1)
    live = Collect()
    feed = engine.feed([parse_channel("inventory:eu")], live)
    await feed.start(start)
    feed.go_live()
    for version in range(2, 6):
        await publish(broker, version)

    resumed = [Collect() for _ in range(3)]
    for sink in resumed:
        replay = engine.feed([parse_channel("inventory:eu")], sink)
        await replay.start(start)
        replay.go_live()

    assert [e.data["version"] for e in live.events] == [2, 3, 4, 5]
    for sink in resumed:
        # the very objects the live feed got: each frame is encoded once for all of them
        assert [id(e) for e in sink.events] == [id(e) for e in live.events]
    frame = live.events[0].ws_frame("inventory:eu", False)
    assert all(sink.events[0].ws_frame("inventory:eu", False) is frame for sink in resumed)
    await engine.stop()


async def test_the_recent_events_kept_for_replay_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(engine_module, "RECENT_EVENTS", 5)
    broker = MemoryBroker()
    engine = SyncEngine(broker, "eu")
    await engine.start()
    start = await publish(broker, 1)
    for version in range(2, 21):
        await publish(broker, version)
    assert len(engine._recent["inventory.eu"]) == 5

    # older publications are read from the broker and built afresh: nothing is missing
    sink = Collect()
    feed = engine.feed([parse_channel("inventory:eu")], sink)
    await feed.start(start)
    feed.go_live()
    assert [e.data["version"] for e in sink.events] == list(range(2, 21))
    await engine.stop()
