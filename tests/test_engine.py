"""The sync engine's replay, unit-level over the in-memory broker (the transports test it end to end)."""

from __future__ import annotations

import orjson
import pytest

from sync import engine as engine_module
from sync.broker import Position
from sync.broker_memory import MemoryBroker
from sync.channels import Channel, ChannelError, cart_channel, parse_channel, user_channel
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


# -- keyed feeds: carts and users ---------------------------------------------------------------------


class Resyncs(Collect):
    def __init__(self) -> None:
        super().__init__()
        self.resyncs: list[tuple[str, Position]] = []

    def resync(self, reason: str, current: Position, channels: tuple[Channel, ...]) -> None:
        self.resyncs.append((reason, current))


async def publish_cart(broker: MemoryBroker, stream: str, cart_id: str, version: int) -> Position:
    data = orjson.dumps({"type": "cart.delta", "cart_id": cart_id, "version": version})
    position = await broker.publish(stream, data)
    assert position is not None
    return position


async def test_a_cart_event_is_offered_only_to_the_feeds_of_that_cart(monkeypatch) -> None:
    offered: list[object] = []
    offer = engine_module.Feed.offer

    def counted(feed: engine_module.Feed, event: Event) -> None:
        offered.append(feed)
        offer(feed, event)

    monkeypatch.setattr(engine_module.Feed, "offer", counted)
    broker = MemoryBroker()
    engine = SyncEngine(broker, "eu")
    await engine.start()
    mine, others = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-0000000001ff"
    channel = cart_channel("eu", mine, "alice")
    sink = Collect()
    feed = engine.feed([channel], sink)
    await feed.start(None)
    feed.go_live()
    bystanders = []
    for n in range(50):  # other carts of the same stream: their feeds are not offered alice's events
        other = engine.feed([cart_channel("eu", others[:-2] + f"{n:02d}", "alice")], Collect())
        await other.start(None)
        other.go_live()
        bystanders.append(other)

    await publish_cart(broker, channel.stream, mine, 1)
    await publish_cart(broker, channel.stream, mine, 2)

    assert [e.data["version"] for e in sink.events] == [1, 2]
    assert offered == [feed, feed]  # one offer per event, to its one subscriber
    assert all(not b.sink.events for b in bystanders)  # type: ignore[attr-defined]
    assert engine.feed_count() == 51
    feed.close()
    assert engine.feed_count() == 50
    await engine.stop()


async def test_a_keyed_feed_resumes_past_other_keys_events_and_its_cursor_follows_the_stream() -> None:
    broker = MemoryBroker()
    engine = SyncEngine(broker, "eu")
    await engine.start()
    cart, other = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"
    stream = cart_channel("eu", cart, "bob").stream
    start = await publish_cart(broker, stream, cart, 1)
    await publish_cart(broker, stream, other, 1)
    await publish_cart(broker, stream, cart, 2)  # offset 3: not contiguous for this feed, and no gap
    sink = Resyncs()
    feed = engine.feed([cart_channel("eu", cart, "bob")], sink)
    await feed.start(start)
    feed.go_live()
    top = await publish_cart(broker, stream, other, 2)

    assert [e.data["version"] for e in sink.events] == [2]
    assert sink.resyncs == []
    assert feed.cursor() == top  # every event of its key up to the stream's top has been offered
    await engine.stop()


async def test_a_jump_of_the_stream_is_told_to_keyed_feeds_that_saw_none_of_it() -> None:
    broker = MemoryBroker()
    engine = SyncEngine(broker, "eu")
    await engine.start()
    cart = "00000000-0000-4000-8000-00000000000c"
    channel = cart_channel("eu", cart, "carol")
    await publish_cart(broker, channel.stream, cart, 1)
    sink = Resyncs()
    feed = engine.feed([channel], sink)
    await feed.start(None)
    feed.go_live()
    # The node's reader missed two publications (say, trimmed while it was cut off from Redis).
    stream = broker._stream(channel.stream)
    stream.offset += 2
    jumped = await publish_cart(broker, channel.stream, "00000000-0000-4000-8000-00000000000d", 1)

    assert sink.resyncs == [("gap", jumped)]
    await engine.stop()


async def test_one_feed_follows_one_stream() -> None:
    engine = SyncEngine(MemoryBroker(), "eu")
    cart = cart_channel("eu", "00000000-0000-4000-8000-00000000000e", "dave")
    with pytest.raises(ChannelError) as refused:
        engine.feed([parse_channel("inventory:eu"), cart], Collect())
    assert refused.value.code == "channels_span_streams"
    # a user's own channel and their carts share one stream
    engine.feed([cart, user_channel("eu", "dave")], Collect()).close()


async def test_a_publication_of_no_known_kind_is_dropped_and_the_others_go_on() -> None:
    broker = MemoryBroker()
    engine = SyncEngine(broker, "eu")
    await engine.start()
    sink = Collect()
    channel = user_channel("eu", "erin")
    feed = engine.feed([channel], sink)
    await feed.start(None)
    feed.go_live()
    await broker.publish(channel.stream, orjson.dumps({"type": "no.such.type", "sub": "erin"}))
    await broker.publish(channel.stream, orjson.dumps({"type": "cart.status", "sub": "erin", "status": "x"}))
    assert [e.type for e in sink.events] == ["cart.status"]
    await engine.stop()
