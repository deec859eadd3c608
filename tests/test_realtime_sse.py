"""Server-Sent Events over a real socket, on both backends: the stream's framing, resume by Last-Event-ID,
channels, resync, bad requests, auth, heartbeats, going away, and the hub's own writes (several events in
one write, a stalled stream cut off, the chunked body ended properly)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from hub.transports.sse import SseConnection
from tests.conftest import token
from tests.realtime_helpers import (
    CHANNEL,
    REGION,
    RawSse,
    SseMessage,
    SseStream,
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
    # (tokens in URLs on: these tests cover ?access_token= too; tests/test_tickets.py the default)
    async with eu_hub(database_url, tokens_in_urls=True) as hub:
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


# -- writes: several events in one turn, a stalled stream, the end of the body --------------------------


SLOW_WID = "w" + "x" * 63  # the longest warehouse id and sku: larger events fill the socket buffers sooner


async def reserve_each(hub, pid: str, wid: str, lines: int) -> None:
    """One reservation of ``lines`` lines of one unit: as many stock changes, published in one batch."""
    status, body, _ = await hub.call(
        "POST",
        "/api/v1/reservations",
        token=hub.alice,
        json={"lines": [{"product_id": pid, "warehouse_id": wid, "quantity": 1}] * lines},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert status == 201, body


async def test_events_pending_in_one_turn_leave_in_one_write_intact_and_in_order(
    rt_hub, product, monkeypatch
):
    flushed: list[int] = []
    flush = SseConnection.flush

    def counting(self: SseConnection) -> tuple[int, int, float | None]:
        result = flush(self)
        flushed.append(result[0])
        return result

    monkeypatch.setattr(SseConnection, "flush", counting)
    await rt_hub.stock(product, "par-1", 1_000)
    await wait_for_position(rt_hub, 1)
    stream = await RawSse.connect(rt_hub)
    try:
        opening = await stream.read_messages(2)
        assert opening[0].retry == 2000 and opening[1].event == "ready"
        assert stream.chunks[0].startswith(b"retry: 2000\n\n")  # the opening is one chunk
        await reserve_each(rt_hub, product, "par-1", 80)  # 80 changes, relayed and fanned out in one turn
        messages = (await stream.read_messages(2 + 80))[2:]
    finally:
        stream.close()
    assert [m.event for m in messages] == ["inventory"] * 80
    assert [m.json()["data"]["reserved"] for m in messages] == list(range(1, 81))
    assert_contiguous([opening[1].id] + [m.id for m in messages])
    assert all(m.json()["position"] == m.id for m in messages)
    assert max(flushed) > 1, flushed  # several events went out in one write...
    assert len(stream.chunks) - 1 == 80  # ...each its own whole chunk (so a client never sees half a one)


def slow_hub(database_url: str):
    return eu_hub(
        database_url, warehouses=(SLOW_WID,), send_buffer_messages=200, send_buffer_bytes=1024 * 1024
    )


async def stall_until_cut_off(hub) -> tuple[RawSse, SseMessage, list[SseMessage], SseStream, Any]:
    """A stream that never reads (and a small receive buffer) beside a healthy one, both following the
    region and a product; bursts of 80 changes, one at a time, until the stalled one is cut off (a
    reader that keeps up never holds more than 80 queued messages; one that stopped overflows the 200
    allowed). Returns the stalled stream, its ready event, what the healthy one received and the healthy
    stream (still open, in the returned context)."""
    pid = str((await hub.product("S" * 64))["id"])
    await hub.stock(pid, SLOW_WID, 1_000_000)
    await wait_for_position(hub, 1)
    channels = f"{CHANNEL},{product_channel(pid)}"
    context = sse_stream(hub, channels)
    healthy = await context.__aenter__()
    await healthy.opening()
    stalled = await RawSse.connect(hub, channels, receive_buffer=4096)
    ready = (await stalled.read_messages(2))[1]
    received: list[SseMessage] = []
    deadline = time.monotonic() + 40
    while await metric(hub, "synchub_slow_consumer_disconnects_total", transport="sse") == 0:
        assert time.monotonic() < deadline, f"not cut off after {len(received)} events"
        await reserve_each(hub, pid, SLOW_WID, 80)
        received += await healthy.inventory(80)
    return stalled, ready, received, healthy, context


async def test_a_stream_that_stops_reading_is_cut_off_with_a_close_event_while_a_healthy_one_gets_every_event(
    database_url,
):
    async with slow_hub(database_url) as hub:
        stalled, ready, received, healthy, context = await stall_until_cut_off(hub)
        try:
            # Reading again at last, the stalled client finds what was written for it, then the close
            # event and the end of the body.
            messages, ended = await stalled.read_to_end(within=15)
            assert ended, "the body did not end with its empty chunk, then the end of the connection"
            events = [m for m in messages[2:] if not m.comments]
            assert events[-1].event == "close"
            assert events[-1].json() == {"code": "slow_consumer", "reconnect": True}
            inventory = events[:-1]
            assert inventory and all(m.event == "inventory" for m in inventory)
            assert_contiguous([ready.id] + [m.id for m in inventory])  # it resumes from its last id
            assert len(inventory) < len(received)
            # The healthy stream carries on after its neighbour was cut off, and missed nothing.
            await hub.stock(str(received[0].json()["data"]["product_id"]), SLOW_WID, 2_000_000)
            received += await healthy.inventory(1)
            assert [m.json()["data"]["reserved"] for m in received[:-1]] == list(range(1, len(received)))
            assert_contiguous([m.id for m in received])
            # One stream was cut off once: the counter counts disconnects, not dropped messages.
            assert await metric(hub, "synchub_slow_consumer_disconnects_total", transport="sse") == 1
        finally:
            stalled.close()
            await context.__aexit__(None, None, None)


async def test_a_stream_cut_off_for_never_reading_is_released_within_seconds(database_url):
    """The hub gives a stalled peer 2 s to take the end of the stream, then lets go of the connection; it
    must not hold the socket and its buffers until the peer reads again (which may be never)."""
    async with slow_hub(database_url) as hub:
        stalled, _, _, _, context = await stall_until_cut_off(hub)
        try:

            async def only_the_healthy_one() -> bool:
                return await metric(hub, "synchub_connections", transport="sse", region=REGION) == 1

            await eventually(only_the_healthy_one, within=5, what="the stalled stream released")
            assert await metric(hub, "synchub_subscriptions", transport="sse") == 1
        finally:
            stalled.close()
            await context.__aexit__(None, None, None)


async def test_a_hub_shutting_down_ends_the_body_of_every_stream_properly(database_url):
    """The close event, then the empty chunk that ends a chunked body, then the end of the connection:
    a client can tell a stream that ended from one that was cut."""
    stack = contextlib.AsyncExitStack()
    hub = await stack.enter_async_context(eu_hub(database_url))
    shutdown: asyncio.Task[None] | None = None
    stream = await RawSse.connect(hub)
    try:
        await stream.read_messages(2)
        shutdown = asyncio.create_task(stack.aclose())
        messages, ended = await stream.read_to_end(within=3)
    finally:
        stream.close()
        await asyncio.wait_for(shutdown if shutdown is not None else stack.aclose(), 10)
    assert ended
    events = [m for m in messages[2:] if not m.comments]
    assert [m.event for m in events] == ["close"]
    assert events[0].json() == {"code": "going_away", "reconnect": True}


# -- the socket taken over from aiohttp ----------------------------------------------------------------


async def test_an_open_stream_is_the_hubs_not_aiohttps_and_ignores_what_the_client_sends(rt_hub, product):
    assert rt_hub.runner is not None and rt_hub.runner.server is not None
    http_connections = len(rt_hub.runner.server.connections)
    stream = await RawSse.connect(rt_hub)
    try:
        await stream.read_messages(2)
        assert b"\r\nconnection: close" in stream.head.lower()  # not kept alive after the stream
        # aiohttp's server no longer counts it: the hub's registry does (shutdown ends it)
        assert len(rt_hub.runner.server.connections) == http_connections
        await asyncio.get_running_loop().sock_sendall(stream.sock, b"GET / HTTP/1.1\r\n\r\nnonsense")
        await rt_hub.stock(product, "par-1", 7)
        event = (await stream.read_messages(3))[2]
    finally:
        stream.close()
    assert event.event == "inventory" and event.json()["data"]["on_hand"] == 7


async def test_an_http_1_0_client_gets_the_stream_unchunked_until_the_connection_ends(database_url):
    stack = contextlib.AsyncExitStack()
    hub = await stack.enter_async_context(eu_hub(database_url, sse_heartbeat_seconds=0.2))
    product = str((await hub.product("SKU-1"))["id"])
    url = urlsplit(hub.base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    shutdown: asyncio.Task[None] | None = None
    try:
        writer.write(f"GET /api/v1/sse?channels={CHANNEL} HTTP/1.0\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower(), head
        opening = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
        ready = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
        heartbeat = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
        await hub.stock(product, "par-1", 9)
        event = heartbeat
        while event == heartbeat:  # (more heartbeats may come first)
            event = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
        shutdown = asyncio.create_task(stack.aclose())
        rest = await asyncio.wait_for(reader.read(), 5)  # to the end of the connection
    finally:
        writer.close()
        await asyncio.wait_for(shutdown if shutdown is not None else stack.aclose(), 10)
    assert opening == b"retry: 2000\n\n"
    assert ready.startswith(b"id: ") and b"event: ready\n" in ready
    assert heartbeat == b": heartbeat\n\n"
    assert b"event: inventory\n" in event and b'"on_hand":9' in event
    assert rest.endswith(b'event: close\ndata: {"code":"going_away","reconnect":true}\n\n'), rest
