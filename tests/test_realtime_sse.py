"""Server-Sent Events over a real socket, on both backends: the stream's framing, resume by Last-Event-ID,
channels, resync, bad requests, auth, heartbeats and going away."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import aiohttp
import pytest

from tests.conftest import token
from tests.realtime_helpers import (
    CHANNEL,
    REGION,
    SseMessage,
    current_position,
    epoch,
    eu_hub,
    eventually,
    metric,
    offset,
    product_channel,
    set_stock_many,
    sse_stream,
    wait_for_position,
)


@pytest.fixture
async def rt_hub(database_url: str):
    async with eu_hub(database_url) as hub:
        yield hub


@pytest.fixture
async def product(rt_hub) -> str:
    return str((await rt_hub.product("SKU-1"))["id"])


def assert_contiguous(ids: list[str | None]) -> None:
    assert all(ids), ids
    assert len({epoch(i) for i in ids if i}) == 1, ids
    offsets = [offset(i) for i in ids if i]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), offsets


def on_hands(messages: list[SseMessage]) -> list[int]:
    return [m.json()["data"]["on_hand"] for m in messages]


# -- the stream --------------------------------------------------------------------------------------


async def test_a_stream_opens_with_retry_and_a_ready_event_whose_id_is_the_current_position(rt_hub, product):
    await set_stock_many(rt_hub, product, [1, 2])
    await wait_for_position(rt_hub, 2)
    async with sse_stream(rt_hub) as sse:
        retry, ready = await sse.opening()
    assert retry == 2000
    assert ready.id == await current_position(rt_hub)
    assert offset(ready.id) == 2
    assert ready.json() == {"position": ready.id, "channels": [CHANNEL]}


async def test_stock_changes_arrive_as_inventory_events_whose_id_is_their_position(rt_hub, product):
    async with sse_stream(rt_hub) as sse:
        _, ready = await sse.opening()
        await set_stock_many(rt_hub, product, [10, 11, 12])
        messages = await sse.inventory(3)
    assert on_hands(messages) == [10, 11, 12]
    for message in messages:
        body = message.json()
        assert set(body) == {"type", "channel", "position", "data"}
        assert body["type"] == "event" and body["channel"] == CHANNEL
        assert body["position"] == message.id
        assert body["data"]["product_id"] == product and body["data"]["region"] == REGION
    assert_contiguous([ready.id] + [m.id for m in messages])


@pytest.mark.parametrize("how", ["header", "query"])
async def test_resume_from_the_last_event_id_replays_every_missed_event_once_in_order_then_goes_live(
    rt_hub, product, how
):
    async with sse_stream(rt_hub) as sse:
        await sse.opening()
        await set_stock_many(rt_hub, product, [1, 2])
        seen = await sse.inventory(2)
    last = seen[-1].id
    assert last is not None
    await set_stock_many(rt_hub, product, [3, 4, 5])  # missed while away
    resume = {"last_event_id": last} if how == "header" else {"query": f"last_event_id={last}"}
    async with sse_stream(rt_hub, **resume) as sse:
        await sse.opening()
        writer = asyncio.create_task(set_stock_many(rt_hub, product, [6, 7]))
        try:
            resumed = await sse.inventory(5)
        finally:
            await writer
        await set_stock_many(rt_hub, product, [8])
        resumed += await sse.inventory(1)
    assert on_hands(resumed) == [3, 4, 5, 6, 7, 8]
    assert_contiguous([m.id for m in seen + resumed])


async def test_a_resumed_stream_never_sends_an_id_ahead_of_events_still_to_come(rt_hub, product):
    """An EventSource remembers the last ``id:`` it saw: a ``ready`` id past the replay would make a client
    that drops right after ``ready`` skip the replayed events when it reconnects."""
    async with sse_stream(rt_hub) as sse:
        await sse.opening()
        await set_stock_many(rt_hub, product, [1])
        (first,) = await sse.inventory(1)
    await set_stock_many(rt_hub, product, [2, 3])
    await wait_for_position(rt_hub, offset(first.id or "") + 2)
    async with sse_stream(rt_hub, last_event_id=first.id) as sse:
        _, ready = await sse.opening()
        replayed = await sse.inventory(2)
    ids = [ready.id] + [m.id for m in replayed]
    assert [offset(i or "") for i in ids] == sorted(offset(i or "") for i in ids), ids
    assert ready.id == first.id


async def test_an_event_matching_several_channels_of_a_stream_is_sent_once(rt_hub, product):
    other = str((await rt_hub.product("SKU-2"))["id"])
    channels = f"{CHANNEL},{product_channel(product)},{CHANNEL}"
    async with sse_stream(rt_hub, channels) as sse:
        _, ready = await sse.opening()
        assert ready.json()["channels"] == [CHANNEL, product_channel(product)]
        for pid, value in [(product, 1), (other, 2), (product, 3)]:
            await rt_hub.stock(pid, "par-1", value)
        messages = await sse.inventory(3)
        await rt_hub.stock(other, "par-1", 99)  # a sentinel: the next message is this one, nothing repeated
        (sentinel,) = await sse.inventory(1)
    assert on_hands(messages) == [1, 2, 3]
    assert on_hands([sentinel]) == [99]
    assert_contiguous([ready.id] + [m.id for m in [*messages, sentinel]])


async def test_product_channels_carry_only_their_products(rt_hub, product):
    second = str((await rt_hub.product("SKU-2"))["id"])
    third = str((await rt_hub.product("SKU-3"))["id"])
    channels = f"{product_channel(product)},{product_channel(second)}"
    async with sse_stream(rt_hub, channels) as sse:
        await sse.opening()
        for pid, value in [(third, 1), (product, 2), (third, 3), (second, 4), (third, 5), (product, 6)]:
            await rt_hub.stock(pid, "par-1", value)
        messages = await sse.inventory(3)
    assert [(m.json()["data"]["product_id"], m.json()["data"]["on_hand"]) for m in messages] == [
        (product, 2),
        (second, 4),
        (product, 6),
    ]
    assert [m.json()["channel"] for m in messages] == [
        product_channel(product),
        product_channel(second),
        product_channel(product),
    ]
    assert [offset(m.id or "") for m in messages] == [2, 4, 6]


async def test_an_idle_stream_gets_heartbeat_comments_and_a_closed_one_is_released(database_url):
    async with eu_hub(database_url, sse_heartbeat_seconds=0.2) as hub:
        async with sse_stream(hub) as sse:
            await sse.opening()
            message = await sse.next(within=3)
            assert message is not None and message.comments == ["heartbeat"] and not message.data
            assert await metric(hub, "synchub_connections", transport="sse", region=REGION) == 1

        async def released() -> bool:
            return await metric(hub, "synchub_connections", transport="sse", region=REGION) == 0

        await eventually(released, within=3, what="the departed SSE client released")


# -- resync ------------------------------------------------------------------------------------------


@pytest.fixture
async def short_hub(database_url: str):
    async with eu_hub(database_url, stream_max_len=5) as hub:
        pid = str((await hub.product("SKU-1"))["id"])
        await set_stock_many(hub, pid, list(range(1, 9)))
        await wait_for_position(hub, 8)
        yield hub


@pytest.mark.parametrize("stale", ["too-old", "foreign-epoch", "future"])
async def test_an_unresumable_last_event_id_gets_a_resync_event_and_the_stream_ends(short_hub, stale):
    position = await current_position(short_hub)
    since = {
        "too-old": f"{epoch(position)}:1",
        "foreign-epoch": "deadbeef:1",
        "future": f"{epoch(position)}:{offset(position) + 100}",
    }[stale]
    async with sse_stream(short_hub, last_event_id=since) as sse:
        messages = await sse.read_to_end()
    assert messages[0].retry == 2000
    events = [m for m in messages[1:] if m.comments == []]
    assert [m.event for m in events] == ["resync"], messages
    assert events[0].json() == {
        "type": "resync",
        "channel": CHANNEL,
        "reason": "position_expired",
        "position": position,
        "snapshot": f"/api/v1/inventory?region={REGION}",
    }
    status, body, _ = await short_hub.call("GET", events[0].json()["snapshot"])
    assert status == 200
    assert body["position"] == position
    assert [i["on_hand"] for i in body["items"]] == [8]


# -- bad requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("", "invalid_channel"),
        ("channels=", "invalid_channel"),
        ("channels=stock:eu", "invalid_channel"),
        ("channels=inventory:eu:not-a-uuid", "invalid_channel"),
        ("channels=inventory:EU", "invalid_channel"),
        ("channels=" + ",".join(product_channel(str(uuid.uuid4())) for _ in range(21)), "invalid_channel"),
        ("channels=inventory:us", "channel_not_served"),
        (f"channels=inventory:eu,inventory:us:{uuid.uuid4()}", "channel_not_served"),
        ("channels=inventory:eu&last_event_id=yesterday", "invalid_position"),
        ("channels=inventory:eu&last_event_id=abc:-1", "invalid_position"),
    ],
)
async def test_a_bad_request_gets_a_400_problem(rt_hub, query, code):
    status, body, headers = await rt_hub.call("GET", f"/api/v1/sse?{query}")
    assert status == 400, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["code"] == code


@pytest.mark.parametrize("value", ["yesterday", "abc", ":1", "x:1:2", "e:01"])
async def test_a_malformed_last_event_id_header_gets_a_400_invalid_position(rt_hub, value):
    status, body, _ = await rt_hub.call(
        "GET", f"/api/v1/sse?channels={CHANNEL}", headers={"Last-Event-ID": value}
    )
    assert status == 400, body
    assert body["code"] == "invalid_position"


# -- auth --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["header", "query"])
@pytest.mark.parametrize(
    ("credential", "code"), [("not-a-jwt", "invalid_token"), ("expired", "token_expired")]
)
async def test_an_invalid_token_gets_a_401_problem(rt_hub, where, credential, code):
    value = token("alice", ttl=-60) if credential == "expired" else credential
    headers = {"Authorization": f"Bearer {value}"} if where == "header" else {}
    query = f"&access_token={value}" if where == "query" else ""
    status, body, _ = await rt_hub.call("GET", f"/api/v1/sse?channels={CHANNEL}{query}", headers=headers)
    assert status == 401, body
    assert body["code"] == code


@pytest.mark.parametrize("where", ["header", "query"])
async def test_a_valid_token_is_accepted(rt_hub, product, where):
    value = token("alice", "customer")
    headers = {"Authorization": f"Bearer {value}"} if where == "header" else {}
    query = f"access_token={value}" if where == "query" else ""
    async with sse_stream(rt_hub, headers=headers, query=query) as sse:
        await sse.opening()
        await rt_hub.stock(product, "par-1", 4)
        assert on_hands(await sse.inventory(1)) == [4]


# -- going away --------------------------------------------------------------------------------------


async def test_a_hub_shutting_down_ends_sse_streams_with_a_close_event(database_url):
    stack = contextlib.AsyncExitStack()
    hub = await stack.enter_async_context(eu_hub(database_url))
    shutdown: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as session, sse_stream(hub, session=session) as sse:
            await sse.opening()
            started = time.monotonic()
            shutdown = asyncio.create_task(stack.aclose())
            rest = await sse.read_to_end(within=3)
            assert time.monotonic() - started < 2
    finally:
        await asyncio.wait_for(shutdown if shutdown is not None else stack.aclose(), 10)
    events = [m for m in rest if not m.comments]
    assert [m.event for m in events] == ["close"]
    assert events[0].json() == {"code": "going_away", "reconnect": True}
