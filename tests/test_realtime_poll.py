"""Long-poll over a real socket, on both backends: answers at once or waits, cursor chaining, channel
filtering, resync, bad requests, auth and going away."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import token
from tests.realtime_helpers import (
    CHANNEL,
    REGION,
    current_position,
    epoch,
    eu_hub,
    eventually,
    metric,
    offset,
    poll,
    product_channel,
    set_stock_many,
    wait_for_position,
)


@pytest.fixture
async def rt_hub(database_url: str):
    # (tokens in URLs on: these tests cover ?access_token= too; tests/test_tickets.py the default)
    async with eu_hub(database_url, tokens_in_urls=True) as hub:
        yield hub


@pytest.fixture
async def product(rt_hub) -> str:
    return str((await rt_hub.product("SKU-1"))["id"])


async def polling(hub) -> None:
    """Wait until a poll is parked on the hub."""

    async def parked() -> bool:
        return await metric(hub, "synchub_connections", transport="poll", region=REGION) >= 1

    await eventually(parked, what="a waiting poll")


def on_hands(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["on_hand"] for e in events]


def assert_contiguous(positions: list[str]) -> None:
    assert len({epoch(p) for p in positions}) == 1, positions
    offsets = [offset(p) for p in positions]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), offsets


# -- answering ---------------------------------------------------------------------------------------


async def test_a_poll_answers_at_once_when_events_exist_after_the_cursor(rt_hub, product):
    start = await current_position(rt_hub)
    await set_stock_many(rt_hub, product, [1, 2])
    await wait_for_position(rt_hub, offset(start) + 2)
    began = time.monotonic()
    status, body = await poll(rt_hub, cursor=start, wait=20)
    assert time.monotonic() - began < 1
    assert status == 200, body
    assert on_hands(body["events"]) == [1, 2]
    assert body["cursor"] == body["events"][-1]["position"]
    event = body["events"][0]
    assert set(event) == {"type", "channel", "position", "data"}
    assert event["type"] == "event" and event["channel"] == CHANNEL
    assert event["data"]["product_id"] == product and event["data"]["version"] == 1
    assert_contiguous([start] + [e["position"] for e in body["events"]])


async def test_a_poll_without_events_waits_for_its_timeout_and_returns_an_empty_reply_at_the_same_cursor(
    rt_hub, product
):
    await rt_hub.stock(product, "par-1", 1)
    cursor = await wait_for_position(rt_hub, 1)
    began = time.monotonic()
    status, body = await poll(rt_hub, cursor=cursor, wait=1)
    elapsed = time.monotonic() - began
    assert status == 200, body
    assert body == {"events": [], "cursor": cursor}
    assert 0.9 <= elapsed < 3


async def test_a_poll_without_a_cursor_starts_from_now(rt_hub, product):
    await set_stock_many(rt_hub, product, [1, 2, 3])
    now = await wait_for_position(rt_hub, 3)
    status, body = await poll(rt_hub, wait=0)
    assert status == 200, body
    assert body == {"events": [], "cursor": now}


async def test_a_change_made_while_a_poll_waits_is_returned_by_it(rt_hub, product):
    cursor = await current_position(rt_hub)
    began = time.monotonic()
    waiting = asyncio.create_task(poll(rt_hub, cursor=cursor, wait=20))
    await polling(rt_hub)
    await rt_hub.stock(product, "par-1", 7)
    status, body = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - began < 5
    assert status == 200, body
    assert on_hands(body["events"]) == [7]
    assert offset(body["cursor"]) == offset(cursor) + 1


async def test_chained_cursors_yield_every_event_once_in_order(rt_hub, product):
    cursor = await current_position(rt_hub)
    values = list(range(1, 16))

    async def write() -> None:
        for value in values:
            await rt_hub.stock(product, "par-1", value)
            await asyncio.sleep(0.01)

    writer = asyncio.create_task(write())
    received: list[dict[str, Any]] = []
    polls = 0
    try:
        while len(received) < len(values):
            assert polls < 100, received
            status, body = await poll(rt_hub, cursor=cursor, wait=5)
            assert status == 200, body
            received.extend(body["events"])
            if body["events"]:
                assert body["cursor"] == body["events"][-1]["position"]
            cursor = body["cursor"]
            polls += 1
    finally:
        await writer
    status, body = await poll(rt_hub, cursor=cursor, wait=0)
    assert body == {"events": [], "cursor": cursor}
    assert on_hands(received) == values
    assert_contiguous([e["position"] for e in received])


async def test_a_full_reply_stops_its_cursor_at_the_last_event_it_holds(database_url):
    async with eu_hub(database_url, poll_max_events=3) as hub:
        pid = str((await hub.product("SKU-1"))["id"])
        await set_stock_many(hub, pid, [1, 2, 3, 4, 5])
        await wait_for_position(hub, 5)
        status, first = await poll(hub, cursor=f"{epoch(await current_position(hub))}:0", wait=0)
        assert status == 200, first
        assert on_hands(first["events"]) == [1, 2, 3]
        assert first["cursor"] == first["events"][-1]["position"]
        status, second = await poll(hub, cursor=first["cursor"], wait=0)
        assert on_hands(second["events"]) == [4, 5]
        assert offset(second["cursor"]) == 5


async def test_a_product_channel_poll_advances_its_cursor_past_other_products_events(rt_hub, product):
    other = str((await rt_hub.product("SKU-2"))["id"])
    start = await current_position(rt_hub)
    await set_stock_many(rt_hub, other, [1, 2])
    await wait_for_position(rt_hub, offset(start) + 2)
    status, body = await poll(rt_hub, product_channel(product), cursor=start, wait=0)
    assert status == 200, body
    assert body["events"] == []
    assert offset(body["cursor"]) == offset(start) + 2  # past the two events no channel matched
    # Waiting from there does not bring them back, and the next own change arrives.
    cursor = body["cursor"]
    status, body = await poll(rt_hub, product_channel(product), cursor=cursor, wait=1)
    assert body == {"events": [], "cursor": cursor}
    waiting = asyncio.create_task(poll(rt_hub, product_channel(product), cursor=cursor, wait=10))
    await polling(rt_hub)
    await rt_hub.stock(other, "par-1", 3)
    await rt_hub.stock(product, "par-1", 4)
    status, body = await asyncio.wait_for(waiting, 5)
    assert status == 200, body
    assert [(e["data"]["product_id"], e["data"]["on_hand"]) for e in body["events"]] == [(product, 4)]
    assert body["events"][0]["channel"] == product_channel(product)
    assert offset(body["events"][0]["position"]) == offset(cursor) + 2


async def test_several_channels_in_one_poll_deliver_each_event_once(rt_hub, product):
    other = str((await rt_hub.product("SKU-2"))["id"])
    start = await current_position(rt_hub)
    for pid, value in [(product, 1), (other, 2), (product, 3)]:
        await rt_hub.stock(pid, "par-1", value)
    await wait_for_position(rt_hub, offset(start) + 3)
    status, body = await poll(rt_hub, f"{product_channel(product)},{CHANNEL}", cursor=start, wait=0)
    assert status == 200, body
    assert on_hands(body["events"]) == [1, 2, 3]
    assert [e["channel"] for e in body["events"]] == [
        product_channel(product),
        CHANNEL,
        product_channel(product),
    ]


# -- resync ------------------------------------------------------------------------------------------


@pytest.fixture
async def short_hub(database_url: str):
    async with eu_hub(database_url, stream_max_len=5) as hub:
        pid = str((await hub.product("SKU-1"))["id"])
        await set_stock_many(hub, pid, list(range(1, 9)))
        await wait_for_position(hub, 8)
        yield hub


@pytest.mark.parametrize("stale", ["too-old", "foreign-epoch", "future"])
async def test_an_unresumable_cursor_gets_410_resync_required_with_a_working_snapshot_link(short_hub, stale):
    position = await current_position(short_hub)
    cursor = {
        "too-old": f"{epoch(position)}:1",
        "foreign-epoch": "deadbeef:1",
        "future": f"{epoch(position)}:{offset(position) + 100}",
    }[stale]
    status, _, headers = await short_hub.call(
        "GET", f"/api/v1/poll?channels={CHANNEL}&cursor={cursor}&timeout=0"
    )
    assert status == 410
    assert headers["Content-Type"].startswith("application/problem+json")
    status, problem = await poll(short_hub, cursor=cursor, wait=0)
    assert status == 410
    assert problem["code"] == "resync_required"
    assert problem["position"] == position
    assert problem["snapshot"] == f"/api/v1/inventory?region={REGION}"
    status, snap, _ = await short_hub.call("GET", problem["snapshot"])
    assert status == 200
    assert snap["position"] == position
    assert [i["on_hand"] for i in snap["items"]] == [8]
    # The snapshot's position is a cursor that works.
    status, body = await poll(short_hub, cursor=snap["position"], wait=0)
    assert status == 200
    assert body == {"events": [], "cursor": position}


async def test_the_oldest_retained_cursor_still_resumes(short_hub):
    position = await current_position(short_hub)
    status, body = await poll(short_hub, cursor=f"{epoch(position)}:{offset(position) - 5}", wait=0)
    assert status == 200, body
    assert on_hands(body["events"]) == [4, 5, 6, 7, 8]


# -- bad requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["61", "-1", "soon", "1.5", "100000000000000000000"])
async def test_a_timeout_out_of_range_gets_a_400_invalid_parameter(rt_hub, value):
    status, body, headers = await rt_hub.call("GET", f"/api/v1/poll?channels={CHANNEL}&timeout={value}")
    assert status == 400, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["code"] == "invalid_parameter"
    assert body["parameter"] == "timeout"


async def test_the_largest_timeout_is_accepted(rt_hub, product):
    waiting = asyncio.create_task(poll(rt_hub, wait=60))
    await polling(rt_hub)
    await rt_hub.stock(product, "par-1", 1)
    status, body = await asyncio.wait_for(waiting, 5)
    assert status == 200 and on_hands(body["events"]) == [1]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("timeout=0", "invalid_channel"),
        ("channels=&timeout=0", "invalid_channel"),
        ("channels=inventory&timeout=0", "invalid_channel"),
        ("channels=inventory:eu:1234&timeout=0", "invalid_channel"),
        ("channels=inventory:us&timeout=0", "channel_not_served"),
        ("channels=inventory:eu&cursor=latest&timeout=0", "invalid_position"),
        ("channels=inventory:eu&cursor=abc:1.5&timeout=0", "invalid_position"),
    ],
)
async def test_a_bad_request_gets_a_400_problem(rt_hub, query, code):
    status, body, _ = await rt_hub.call("GET", f"/api/v1/poll?{query}")
    assert status == 400, body
    assert body["code"] == code


# -- auth --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["header", "query"])
@pytest.mark.parametrize(
    ("credential", "code"), [("not-a-jwt", "invalid_token"), ("expired", "token_expired")]
)
async def test_an_invalid_token_gets_a_401_problem(rt_hub, where, credential, code):
    value = token("alice", ttl=-60) if credential == "expired" else credential
    headers = {"Authorization": f"Bearer {value}"} if where == "header" else None
    query = f"access_token={value}" if where == "query" else ""
    status, body = await poll(rt_hub, wait=0, headers=headers, query=query)
    assert status == 401, body
    assert body["code"] == code


@pytest.mark.parametrize("where", ["header", "query"])
async def test_a_valid_token_is_accepted(rt_hub, product, where):
    value = token("alice", "customer")
    headers = {"Authorization": f"Bearer {value}"} if where == "header" else None
    query = f"access_token={value}" if where == "query" else ""
    start = await current_position(rt_hub)
    await rt_hub.stock(product, "par-1", 2)
    status, body = await poll(rt_hub, cursor=start, wait=5, headers=headers, query=query)
    assert status == 200, body
    assert on_hands(body["events"]) == [2]


# -- going away --------------------------------------------------------------------------------------


async def test_a_hub_shutting_down_answers_a_waiting_poll_at_once(database_url):
    stack = contextlib.AsyncExitStack()
    hub = await stack.enter_async_context(eu_hub(database_url))
    shutdown: asyncio.Task[None] | None = None
    try:
        cursor = await current_position(hub)
        async with aiohttp.ClientSession() as session:
            waiting = asyncio.create_task(poll(hub, cursor=cursor, wait=30, session=session))
            await polling(hub)
            began = time.monotonic()
            shutdown = asyncio.create_task(stack.aclose())
            status, body = await asyncio.wait_for(waiting, 5)
            assert time.monotonic() - began < 2
    finally:
        await asyncio.wait_for(shutdown if shutdown is not None else stack.aclose(), 10)
    assert status == 200, body
    assert body == {"events": [], "cursor": cursor}
