"""The WebSocket transport over a real socket, on both backends: subscribe, events, resume, resync, bad input,
auth, slow consumers, going away, and that all three transports agree."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import aiohttp
import jwt
import msgpack
import orjson
import pytest

from tests.conftest import token
from tests.realtime_helpers import (
    CHANNEL,
    JSON,
    MSGPACK,
    REGION,
    RawWebSocket,
    WsClient,
    current_position,
    epoch,
    eu_hub,
    eventually,
    metric,
    offset,
    poll,
    product_channel,
    set_stock_many,
    sse_stream,
    upgrade_headers,
    wait_for_position,
    ws_client,
)

PROTOCOLS = pytest.mark.parametrize("protocol", [JSON, MSGPACK])


@pytest.fixture
async def rt_hub(database_url: str):
    # (tokens in URLs on: these tests cover ?access_token= too; tests/test_tickets.py the default)
    async with eu_hub(database_url, tokens_in_urls=True) as hub:
        yield hub


@pytest.fixture
async def product(rt_hub) -> str:
    return str((await rt_hub.product("SKU-1"))["id"])


def assert_contiguous(events: list[dict[str, Any]]) -> None:
    """One epoch, offsets one apart: nothing skipped, nothing repeated."""
    positions = [e["position"] for e in events]
    assert len({epoch(p) for p in positions}) == 1, positions
    offsets = [offset(p) for p in positions]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), offsets


# -- subscribe and events ----------------------------------------------------------------------------


@PROTOCOLS
async def test_subscribe_replies_subscribed_with_the_current_position_and_the_id(rt_hub, product, protocol):
    await set_stock_many(rt_hub, product, [1, 2])
    await wait_for_position(rt_hub, 2)
    async with ws_client(rt_hub, protocol) as ws:
        reply = await ws.request({"type": "subscribe", "id": 1, "channel": CHANNEL})
    assert reply == {
        "type": "subscribed",
        "id": 1,
        "channel": CHANNEL,
        "position": await current_position(rt_hub),
    }
    assert offset(reply["position"]) == 2


@PROTOCOLS
async def test_stock_changes_arrive_as_events_in_order_each_once_with_increasing_positions(
    rt_hub, product, protocol
):
    async with ws_client(rt_hub, protocol) as ws:
        subscribed = await ws.subscribe()
        await set_stock_many(rt_hub, product, [10, 11, 12, 13, 14])
        events = await ws.events(5)
        await ws.assert_nothing_pending()
    assert [e["data"]["on_hand"] for e in events] == [10, 11, 12, 13, 14]
    assert [e["data"]["version"] for e in events] == [1, 2, 3, 4, 5]
    assert all(e["channel"] == CHANNEL for e in events)
    assert all(set(e) == {"type", "channel", "position", "data"} for e in events)
    assert_contiguous(events)
    assert offset(events[0]["position"]) == offset(subscribed["position"]) + 1
    first = events[0]["data"]
    assert first["product_id"] == product and first["warehouse_id"] == "par-1" and first["region"] == REGION
    assert first["sku"] == "SKU-1" and first["available"] == 10 and isinstance(first["ts"], int)


async def test_a_product_channel_only_gets_the_changes_of_its_product(rt_hub, product):
    other = str((await rt_hub.product("SKU-2"))["id"])
    async with ws_client(rt_hub) as one, ws_client(rt_hub) as everything:
        await one.subscribe(product_channel(product))
        await everything.subscribe()
        for pid, value in [(other, 1), (product, 2), (other, 3), (other, 4), (product, 5)]:
            await rt_hub.stock(pid, "par-1", value)
        region_events = await everything.events(5)
        product_events = await one.events(2)
        await one.assert_nothing_pending()
    assert [(e["data"]["product_id"], e["data"]["on_hand"]) for e in region_events] == [
        (other, 1),
        (product, 2),
        (other, 3),
        (other, 4),
        (product, 5),
    ]
    assert [e["data"]["on_hand"] for e in product_events] == [2, 5]
    assert {e["channel"] for e in product_events} == {product_channel(product)}
    # The same publications, at the same positions, whichever channel carried them.
    assert [e["position"] for e in product_events] == [
        region_events[1]["position"],
        region_events[4]["position"],
    ]


@PROTOCOLS
async def test_unsubscribe_stops_delivery(rt_hub, product, protocol):
    async with ws_client(rt_hub, protocol) as ws, ws_client(rt_hub) as witness:
        await ws.subscribe()
        await witness.subscribe()
        await rt_hub.stock(product, "par-1", 1)
        assert (await ws.events(1))[0]["data"]["on_hand"] == 1
        await witness.events(1)
        reply = await ws.request({"type": "unsubscribe", "id": "u1", "channel": CHANNEL})
        assert reply == {"type": "unsubscribed", "id": "u1", "channel": CHANNEL}
        await rt_hub.stock(product, "par-1", 2)
        # Once the witness has the event, the fan-out is done: had it reached ws, it would be queued.
        assert (await witness.events(1))[0]["data"]["on_hand"] == 2
        await ws.assert_nothing_pending()
        # And the channel can be followed again.
        await ws.subscribe()


@PROTOCOLS
async def test_ping_gets_a_pong_echoing_its_id(rt_hub, protocol):
    async with ws_client(rt_hub, protocol) as ws:
        assert await ws.request({"type": "ping", "id": 42}) == {"type": "pong", "id": 42}
        assert await ws.request({"type": "ping", "id": "abc"}) == {"type": "pong", "id": "abc"}
        assert await ws.request({"type": "ping"}) == {"type": "pong"}


async def test_a_client_without_a_subprotocol_speaks_json(rt_hub):
    async with rt_hub.session.ws_connect(rt_hub.base + "/api/v1/ws") as ws:
        await ws.send_str('{"type": "ping", "id": 1}')
        reply = await asyncio.wait_for(ws.receive(), 5)
    assert reply.type == aiohttp.WSMsgType.TEXT
    assert orjson.loads(reply.data) == {"type": "pong", "id": 1}


# -- resume ------------------------------------------------------------------------------------------


@PROTOCOLS
async def test_resume_with_since_replays_every_missed_event_once_in_order_then_goes_live_without_a_gap(
    rt_hub, product, protocol
):
    async with ws_client(rt_hub, protocol) as ws:
        await ws.subscribe()
        await set_stock_many(rt_hub, product, [1, 2, 3])
        seen = await ws.events(3)
    last = seen[-1]["position"]
    await set_stock_many(rt_hub, product, [4, 5, 6, 7])  # missed while away
    async with ws_client(rt_hub, protocol) as ws:
        await ws.send({"type": "subscribe", "id": "again", "channel": CHANNEL, "since": last})
        # More changes while the replay is under way, and after it.
        writer = asyncio.create_task(set_stock_many(rt_hub, product, [8, 9, 10]))
        messages = []
        try:
            while len([m for m in messages if m["type"] == "event"]) < 7:
                messages.append(await ws.recv())
        finally:
            await writer
        await set_stock_many(rt_hub, product, [11])
        messages.extend(await ws.events(1))
        await ws.assert_nothing_pending()
    acks = [m for m in messages if m["type"] == "subscribed"]
    assert len(acks) == 1 and acks[0]["id"] == "again", messages
    events = [m for m in messages if m["type"] == "event"]
    assert [e["data"]["on_hand"] for e in events] == [4, 5, 6, 7, 8, 9, 10, 11]
    assert_contiguous(seen + events)


async def test_a_resume_is_acknowledged_with_subscribed_at_the_given_position_before_the_missed_events(
    rt_hub, product
):
    """docs/protocol.md: ``since`` → ``subscribed``, the missed events, then live."""
    async with ws_client(rt_hub) as ws:
        await ws.subscribe()
        await set_stock_many(rt_hub, product, [1])
        last = (await ws.events(1))[0]["position"]
    await set_stock_many(rt_hub, product, [2, 3])
    await wait_for_position(rt_hub, offset(last) + 2)
    async with ws_client(rt_hub) as ws:
        first = await ws.request({"type": "subscribe", "id": 9, "channel": CHANNEL, "since": last})
        assert first == {"type": "subscribed", "id": 9, "channel": CHANNEL, "position": last}
        assert [e["data"]["on_hand"] for e in await ws.events(2)] == [2, 3]


@PROTOCOLS
async def test_recover_latest_sends_subscribed_then_a_snapshot_of_current_stock_then_live_events(
    rt_hub, product, protocol
):
    other = str((await rt_hub.product("SKU-2"))["id"])
    await rt_hub.warehouse("ber-1", REGION)
    await set_stock_many(rt_hub, product, [5, 6, 7])
    await rt_hub.stock(other, "ber-1", 40)
    await wait_for_position(rt_hub, 4)
    async with ws_client(rt_hub, protocol) as ws:
        subscribed = await ws.request({"type": "subscribe", "id": 3, "channel": CHANNEL, "recover": "latest"})
        assert subscribed["type"] == "subscribed" and subscribed["id"] == 3
        snap = await ws.recv()
        assert snap["type"] == "snapshot" and snap["channel"] == CHANNEL
        assert snap["position"] == subscribed["position"] == await current_position(rt_hub)
        assert snap["snapshot"] == f"/api/v1/inventory?region={REGION}"
        rows = {(i["product_id"], i["warehouse_id"]): i for i in snap["items"]}
        assert set(rows) == {(product, "par-1"), (other, "ber-1")}
        assert rows[(product, "par-1")]["on_hand"] == 7 and rows[(product, "par-1")]["version"] == 3
        assert rows[(other, "ber-1")]["on_hand"] == 40 and rows[(other, "ber-1")]["sku"] == "SKU-2"
        await ws.assert_nothing_pending()  # no replay of the three earlier changes
        await rt_hub.stock(product, "par-1", 8)
        (event,) = await ws.events(1)
    assert event["data"]["on_hand"] == 8 and event["data"]["version"] == 4
    assert offset(event["position"]) == offset(snap["position"]) + 1


async def test_recover_latest_on_a_product_channel_snapshots_only_that_product(rt_hub, product):
    other = str((await rt_hub.product("SKU-2"))["id"])
    await rt_hub.stock(product, "par-1", 3)
    await rt_hub.stock(other, "par-1", 4)
    async with ws_client(rt_hub) as ws:
        await ws.subscribe(product_channel(product), recover="latest")
        snap = await ws.recv()
    assert snap["type"] == "snapshot" and snap["channel"] == product_channel(product)
    assert [(i["product_id"], i["on_hand"]) for i in snap["items"]] == [(product, 3)]
    assert snap["snapshot"] == f"/api/v1/inventory?region={REGION}&product_id={product}"


# -- resync ------------------------------------------------------------------------------------------


@pytest.fixture
async def short_hub(database_url: str):
    """A hub whose stream keeps only the last 5 events."""
    async with eu_hub(database_url, stream_max_len=5) as hub:
        pid = str((await hub.product("SKU-1"))["id"])
        await set_stock_many(hub, pid, list(range(1, 9)))
        await wait_for_position(hub, 8)
        yield hub


@PROTOCOLS
@pytest.mark.parametrize("stale", ["too-old", "foreign-epoch", "future"])
async def test_an_unresumable_position_gets_a_resync_message_and_no_replay(short_hub, protocol, stale):
    position = await current_position(short_hub)
    since = {
        "too-old": f"{epoch(position)}:1",
        "foreign-epoch": "deadbeef:1",
        "future": f"{epoch(position)}:{offset(position) + 100}",
    }[stale]
    async with ws_client(short_hub, protocol) as ws:
        reply = await ws.request({"type": "subscribe", "id": 5, "channel": CHANNEL, "since": since})
        assert reply == {
            "type": "resync",
            "id": 5,
            "channel": CHANNEL,
            "reason": "position_expired",
            "position": position,
            "snapshot": f"/api/v1/inventory?region={REGION}",
        }
        await ws.assert_nothing_pending()
        # Not subscribed: following the channel afresh works.
        await ws.subscribe()
    status, body, _ = await short_hub.call("GET", reply["snapshot"])
    assert status == 200
    assert body["position"] == position
    assert [i["on_hand"] for i in body["items"]] == [8]


async def test_the_oldest_retained_position_still_resumes_without_a_resync(short_hub):
    position = await current_position(short_hub)
    oldest_resumable = f"{epoch(position)}:{offset(position) - 5}"
    async with ws_client(short_hub) as ws:
        await ws.send({"type": "subscribe", "channel": CHANNEL, "since": oldest_resumable})
        messages = [await ws.recv() for _ in range(6)]
    assert [m["type"] for m in messages].count("subscribed") == 1
    assert [m["data"]["on_hand"] for m in messages if m["type"] == "event"] == [4, 5, 6, 7, 8]


# -- bad input ---------------------------------------------------------------------------------------

TEXT_CASES = {
    "malformed-json": ('{"type": "ping", ', "malformed_frame", None),
    "json-array": ('[{"type": "ping"}]', "malformed_frame", None),
    "json-string": ('"ping"', "malformed_frame", None),
    "missing-type": ('{"id": 7, "channel": "inventory:eu"}', "malformed_frame", 7),
    "type-not-a-string": ('{"id": 8, "type": 5}', "malformed_frame", 8),
    "unknown-type": ('{"id": "t", "type": "subscribe_all"}', "unknown_type", "t"),
    "unknown-field": ('{"id": 2, "type": "ping", "extra": true}', "unknown_field", 2),
    "invalid-channel": ('{"id": 3, "type": "subscribe", "channel": "stock:eu"}', "invalid_channel", 3),
    "channel-not-a-string": ('{"id": 3, "type": "subscribe", "channel": 17}', "invalid_channel", 3),
    "channel-bad-product": (
        '{"id": 3, "type": "subscribe", "channel": "inventory:eu:not-a-uuid"}',
        "invalid_channel",
        3,
    ),
    "channel-too-long": (
        '{"id": 3, "type": "subscribe", "channel": "inventory:' + "a" * 200 + '"}',
        "invalid_channel",
        3,
    ),
    "other-region": ('{"id": 4, "type": "subscribe", "channel": "inventory:us"}', "channel_not_served", 4),
    "other-region-product": (
        f'{{"id": 4, "type": "subscribe", "channel": "inventory:us:{uuid.uuid4()}"}}',
        "channel_not_served",
        4,
    ),
    "bad-since": (
        '{"id": 5, "type": "subscribe", "channel": "inventory:eu", "since": "yesterday"}',
        "invalid_position",
        5,
    ),
    "since-not-a-string": (
        '{"id": 5, "type": "subscribe", "channel": "inventory:eu", "since": 41}',
        "invalid_position",
        5,
    ),
    "unknown-recover": (
        '{"id": 6, "type": "subscribe", "channel": "inventory:eu", "recover": "everything"}',
        "bad_request",
        6,
    ),
    "unsubscribe-unknown": (
        '{"id": "u", "type": "unsubscribe", "channel": "inventory:eu"}',
        "not_subscribed",
        "u",
    ),
    "binary-on-json": (b'{"id": 1, "type": "ping"}', "malformed_frame", None),
    "oversized": ('{"type": "ping", "id": 1, "pad": "' + "x" * 20 * 1024 + '"}', "frame_too_large", None),
    # 18,000 bytes of UTF-8 in 6,000 characters: the limit is in bytes.
    "oversized-multibyte": (
        '{"type": "ping", "id": 1, "pad": "' + "€" * 6000 + '"}',
        "frame_too_large",
        None,
    ),
}


async def _send_raw(ws: WsClient, frame: str | bytes) -> None:
    if isinstance(frame, bytes):
        await ws.ws.send_bytes(frame)
    else:
        await ws.ws.send_str(frame)


async def _assert_error(ws: WsClient, code: str, ident: Any) -> None:
    reply = await ws.recv()
    assert reply["type"] == "error", reply
    assert reply["code"] == code, reply
    assert isinstance(reply["message"], str) and reply["message"]
    if ident is None:
        assert "id" not in reply, reply
    else:
        assert reply.get("id") == ident, f"the error should echo id {ident!r}: {reply}"


async def _assert_still_works(ws: WsClient, hub, product: str) -> None:
    reply = await ws.request({"type": "subscribe", "id": "after", "channel": product_channel(product)})
    assert reply["type"] == "subscribed" and reply["id"] == "after", reply
    await hub.stock(product, "par-1", 99)
    (event,) = await ws.events(1)
    assert event["data"]["on_hand"] == 99


@pytest.mark.parametrize("case", list(TEXT_CASES))
async def test_a_bad_message_on_a_json_connection_gets_an_error_and_the_connection_carries_on(
    rt_hub, product, case
):
    frame, code, ident = TEXT_CASES[case]
    async with ws_client(rt_hub, JSON) as ws:
        await _send_raw(ws, frame)
        await _assert_error(ws, code, ident)
        await _assert_still_works(ws, rt_hub, product)


MSGPACK_CASES = {
    "garbage": (b"\xc1\xc1\xc1", "malformed_frame", None),
    "truncated": (msgpack.packb({"type": "ping", "id": 1})[:-2], "malformed_frame", None),
    "array": (msgpack.packb([1, 2, 3]), "malformed_frame", None),
    "missing-type": (msgpack.packb({"id": 7}), "malformed_frame", 7),
    "unknown-type": (msgpack.packb({"id": 7, "type": "nope"}), "unknown_type", 7),
    "other-region": (
        msgpack.packb({"id": 4, "type": "subscribe", "channel": "inventory:us"}),
        "channel_not_served",
        4,
    ),
    "text-on-msgpack": ('{"type": "ping", "id": 1}', "malformed_frame", None),
    "oversized": (msgpack.packb({"type": "ping", "id": 1, "pad": b"x" * 20 * 1024}), "frame_too_large", None),
}


@pytest.mark.parametrize("case", list(MSGPACK_CASES))
async def test_a_bad_message_on_a_msgpack_connection_gets_an_error_and_the_connection_carries_on(
    rt_hub, product, case
):
    frame, code, ident = MSGPACK_CASES[case]
    async with ws_client(rt_hub, MSGPACK) as ws:
        await _send_raw(ws, frame)
        await _assert_error(ws, code, ident)
        await _assert_still_works(ws, rt_hub, product)


async def test_a_duplicate_subscribe_is_refused_and_the_first_subscription_keeps_delivering_once(
    rt_hub, product
):
    async with ws_client(rt_hub) as ws:
        await ws.subscribe()
        reply = await ws.request({"type": "subscribe", "id": 11, "channel": CHANNEL})
        assert reply["type"] == "error" and reply["code"] == "already_subscribed" and reply["id"] == 11
        await rt_hub.stock(product, "par-1", 1)
        assert [e["data"]["on_hand"] for e in await ws.events(1)] == [1]
        await ws.assert_nothing_pending()


async def test_subscriptions_beyond_the_limit_are_refused(database_url):
    async with eu_hub(database_url, ws_max_subscriptions=2) as hub:
        first, second, third = [str((await hub.product(f"SKU-{i}"))["id"]) for i in range(3)]
        async with ws_client(hub) as ws:
            await ws.subscribe(product_channel(first))
            await ws.subscribe(product_channel(second))
            reply = await ws.request({"type": "subscribe", "id": 1, "channel": product_channel(third)})
            assert reply["type"] == "error" and reply["code"] == "too_many_subscriptions" and reply["id"] == 1
            await ws.request({"type": "unsubscribe", "channel": product_channel(first)})
            await ws.subscribe(product_channel(third))


async def test_a_product_channel_can_be_unsubscribed_by_the_name_it_was_subscribed_with(rt_hub, product):
    upper = product_channel(product.upper())
    async with ws_client(rt_hub) as ws:
        subscribed = await ws.subscribe(upper)
        assert subscribed["channel"] == product_channel(product)  # the canonical name
        reply = await ws.request({"type": "unsubscribe", "id": 2, "channel": upper})
        assert reply == {"type": "unsubscribed", "id": 2, "channel": product_channel(product)}


async def test_a_burst_of_bad_messages_does_not_disturb_the_hub_or_other_clients(rt_hub, product):
    async with ws_client(rt_hub) as bad, ws_client(rt_hub) as good:
        await good.subscribe()
        for frame, _, _ in TEXT_CASES.values():
            await _send_raw(bad, frame)
        replies = [await bad.recv() for _ in TEXT_CASES]
        assert [r["type"] for r in replies] == ["error"] * len(TEXT_CASES)  # codes: tested one by one
        await rt_hub.stock(product, "par-1", 5)
        assert (await good.events(1))[0]["data"]["on_hand"] == 5
        await _assert_still_works(bad, rt_hub, product)
    status, _, _ = await rt_hub.call("GET", "/healthz")
    assert status == 200


async def test_a_frame_over_one_mebibyte_closes_the_connection_with_1009(rt_hub):
    async with ws_client(rt_hub) as ws:
        await ws.ws.send_str('{"type": "ping", "pad": "' + "x" * (1024 * 1024 + 10) + '"}')
        assert await ws.close_code() == 1009


# -- auth --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["header", "query"])
@pytest.mark.parametrize("bad", ["garbage", "wrong-secret", "expired"])
async def test_an_invalid_token_gets_a_401_problem_before_the_upgrade(rt_hub, where, bad):
    credential = {
        "garbage": "not-a-jwt",
        "wrong-secret": jwt.encode(
            {"sub": "eve", "exp": int(time.time()) + 60}, "another-secret-" + "x" * 32, algorithm="HS256"
        ),
        "expired": token("alice", ttl=-60),
    }[bad]
    headers = {"Authorization": f"Bearer {credential}"} if where == "header" else {}
    query = f"access_token={credential}" if where == "query" else ""
    with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
        async with ws_client(rt_hub, query=query, headers=headers):
            pass
    assert raised.value.status == 401
    url = rt_hub.base + "/api/v1/ws" + (f"?{query}" if query else "")
    async with rt_hub.session.get(url, headers={**upgrade_headers(), **headers}) as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"
        problem = await response.json(content_type=None)
    assert problem["code"] == ("token_expired" if bad == "expired" else "invalid_token")


@pytest.mark.parametrize("where", ["header", "query"])
async def test_a_valid_token_is_accepted(rt_hub, product, where):
    credential = token("alice", "customer")
    headers = {"Authorization": f"Bearer {credential}"} if where == "header" else {}
    query = f"access_token={credential}" if where == "query" else ""
    async with ws_client(rt_hub, query=query, headers=headers) as ws:
        await ws.subscribe()
        await rt_hub.stock(product, "par-1", 3)
        assert (await ws.events(1))[0]["data"]["on_hand"] == 3


async def test_a_connection_is_closed_with_4102_when_its_token_expires(database_url):
    short = token("alice", "customer", ttl=2)
    async with eu_hub(database_url, token_refresh_grace_seconds=0) as hub:
        started = time.monotonic()
        async with ws_client(hub, headers={"Authorization": f"Bearer {short}"}) as ws:
            await ws.subscribe()
            assert await ws.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
            assert await ws.close_code(within=6) == 4102
        assert 0.5 < time.monotonic() - started < 6


# -- slow consumers ----------------------------------------------------------------------------------


SLOW_WID = "w" + "x" * 63  # the longest warehouse id and sku: larger events fill the socket buffers sooner


def slow_hub(database_url: str):
    return eu_hub(
        database_url, warehouses=(SLOW_WID,), send_buffer_messages=200, send_buffer_bytes=1024 * 1024
    )


async def stall_until_cut_off(hub, healthy: WsClient) -> tuple[RawWebSocket, str, list[dict[str, Any]]]:
    """Connect a client that never reads, following the region and a product (two messages per change),
    and publish bursts of 80 changes (one reservation of 80 lines each), one burst at a time: a reader
    that keeps up never holds more than 160 queued messages, one that stopped overflows the 200 allowed.
    Returns the stalled client, the product, and every event the healthy client received meanwhile."""
    pid = str((await hub.product("S" * 64))["id"])
    await hub.stock(pid, SLOW_WID, 1_000_000)
    await wait_for_position(hub, 1)
    stalled = await RawWebSocket.connect(hub)
    await stalled.send_text('{"type": "subscribe", "channel": "inventory:eu"}')
    await stalled.send_text(f'{{"type": "subscribe", "channel": "inventory:eu:{pid}"}}')
    await healthy.subscribe()
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + 40
    while await metric(hub, "synchub_slow_consumer_disconnects_total", transport="websocket") == 0:
        assert time.monotonic() < deadline, f"not cut off after {len(received)} events"
        status, body, _ = await hub.call(
            "POST",
            "/api/v1/reservations",
            token=hub.alice,
            json={"lines": [{"product_id": pid, "warehouse_id": SLOW_WID, "quantity": 1}] * 80},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert status == 201, body
        received.extend(await healthy.events(80))
    return stalled, pid, received


async def test_a_client_that_stops_reading_is_cut_off_with_4101_while_a_healthy_one_gets_every_event(
    database_url,
):
    async with slow_hub(database_url) as hub, ws_client(hub) as healthy:
        stalled, pid, received = await stall_until_cut_off(hub, healthy)
        try:
            # Reading again at last, the stalled client finds what was queued for it, then the close.
            messages, code = await stalled.read_until_close(within=15)
        finally:
            stalled.close()
        assert code == 4101
        assert [m["type"] for m in messages[:2]] == ["subscribed", "subscribed"]
        events = messages[2:]
        assert events and all(m["type"] == "event" for m in events)
        region = [e for e in events if e["channel"] == CHANNEL]
        assert [offset(e["position"]) for e in region] == list(range(2, 2 + len(region)))
        assert len(region) < len(received)  # it did miss events: it resumes from its last position
        # The healthy client carries on after its neighbour was cut off, and missed nothing.
        await hub.stock(pid, SLOW_WID, 2_000_000)
        received.extend(await healthy.events(1))
        await healthy.assert_nothing_pending()
        assert [e["data"]["reserved"] for e in received[:-1]] == list(range(1, len(received)))
        assert_contiguous(received)
        # One client was disconnected once: the counter counts disconnects, not dropped messages.
        assert await metric(hub, "synchub_slow_consumer_disconnects_total", transport="websocket") == 1


async def test_a_resume_far_behind_gets_its_whole_replay_though_it_is_longer_than_the_message_limit(
    database_url,
):
    """A replay of 480 events to a client whose buffer allows 200 queued messages: written in one turn,
    within the byte limit, and the client is not cut off. (It was, before anything reached it — and on
    resuming again from the same position, again, for ever: the SDKs found it.)"""
    async with slow_hub(database_url) as hub:
        pid = str((await hub.product("S" * 64))["id"])
        async with ws_client(hub) as ws:
            await ws.subscribe()
            await hub.stock(pid, SLOW_WID, 1_000_000)
            since = (await ws.events(1))[0]["position"]
        for _ in range(6):  # missed while away: 6 reservations of 80 lines, an event each
            status, body, _ = await hub.call(
                "POST",
                "/api/v1/reservations",
                token=hub.alice,
                json={"lines": [{"product_id": pid, "warehouse_id": SLOW_WID, "quantity": 1}] * 80},
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
            assert status == 201, body
        async with ws_client(hub) as ws:
            await ws.subscribe(since=since)
            replayed = await ws.events(480)
            await ws.assert_nothing_pending()
        assert [e["data"]["reserved"] for e in replayed] == list(range(1, 481))
        assert await metric(hub, "synchub_slow_consumer_disconnects_total", transport="websocket") == 0


async def test_a_client_cut_off_for_never_reading_is_released_within_seconds(database_url):
    """The hub gives a stalled peer 2 s to take the close frame, then lets go of the connection; it must not
    hold the socket, the handler and its buffers until the peer reads again (which may be never)."""
    async with slow_hub(database_url) as hub, ws_client(hub) as healthy:
        stalled, _, _ = await stall_until_cut_off(hub, healthy)
        try:

            async def only_the_healthy_one() -> bool:
                return await metric(hub, "synchub_connections", transport="websocket", region=REGION) == 1

            await eventually(only_the_healthy_one, within=5, what="the stalled connection released")
            assert await metric(hub, "synchub_subscriptions", transport="websocket") == 1
        finally:
            stalled.close()


# -- heartbeats --------------------------------------------------------------------------------------


@pytest.fixture
async def beating_hub(database_url: str):
    async with eu_hub(database_url, ws_heartbeat_seconds=0.4) as hub:
        yield hub


async def test_a_silent_peer_is_pinged_and_one_that_answers_stays(beating_hub):
    async with beating_hub.session.ws_connect(
        beating_hub.base + "/api/v1/ws", protocols=(JSON,), autoping=False, heartbeat=None
    ) as ws:
        pings = 0
        started = time.monotonic()
        while time.monotonic() - started < 2:  # five heartbeat intervals
            message = await asyncio.wait_for(ws.receive(), 2)
            assert message.type == aiohttp.WSMsgType.PING, message
            pings += 1
            await ws.pong(message.data)
        assert pings >= 2
        await ws.send_str('{"type": "ping", "id": 1}')
        reply = await asyncio.wait_for(ws.receive(), 2)
        while reply.type == aiohttp.WSMsgType.PING:
            reply = await asyncio.wait_for(ws.receive(), 2)
        assert orjson.loads(reply.data) == {"type": "pong", "id": 1}


async def test_a_peer_that_does_not_answer_pings_is_dropped(beating_hub):
    silent = await RawWebSocket.connect(beating_hub)
    try:
        await silent.send_text('{"type": "subscribe", "channel": "inventory:eu"}')
        started = time.monotonic()

        async def dropped() -> bool:
            return await metric(beating_hub, "synchub_connections", transport="websocket", region=REGION) == 0

        await eventually(dropped, within=4, what="the silent peer dropped")
        # Not before half a heartbeat interval (the earliest ping) and half of one more: it was pinged
        # (an empty ping frame), and then given time to answer.
        assert time.monotonic() - started > 0.35
        assert await metric(beating_hub, "synchub_subscriptions", transport="websocket") == 0
        messages, code = await silent.read_until_close(within=2)
        assert [m["type"] for m in messages] == ["subscribed"]
        assert code is None  # no close frame: a peer that does not answer would not read one either
        assert b"\x89\x00" in silent.pings
    finally:
        silent.close()


async def test_connections_opened_together_are_not_all_pinged_together(database_url):
    async with eu_hub(database_url, ws_heartbeat_seconds=1.0) as hub:

        async def first_ping(opened: float) -> float:
            async with hub.session.ws_connect(
                hub.base + "/api/v1/ws", protocols=(JSON,), autoping=False, heartbeat=None
            ) as ws:
                message = await asyncio.wait_for(ws.receive(), 3)
                assert message.type == aiohttp.WSMsgType.PING, message
                return time.monotonic() - opened

        delays = await asyncio.gather(*(first_ping(time.monotonic()) for _ in range(20)))
    # Each waits between half the interval and all of it (checked on ticks of a quarter interval).
    assert all(0.4 < d < 1.5 for d in delays), delays
    assert max(delays) - min(delays) >= 0.2, delays


async def test_a_protocol_ping_from_the_client_gets_a_pong(rt_hub):
    async with rt_hub.session.ws_connect(
        rt_hub.base + "/api/v1/ws", protocols=(JSON,), autoping=False, heartbeat=None
    ) as ws:
        await ws.ping(b"are you there")
        reply = await asyncio.wait_for(ws.receive(), 5)
    assert reply.type == aiohttp.WSMsgType.PONG
    assert reply.data == b"are you there"


# -- going away --------------------------------------------------------------------------------------


async def test_a_hub_shutting_down_closes_websockets_with_1001(database_url):
    stack = contextlib.AsyncExitStack()
    hub = await stack.enter_async_context(eu_hub(database_url))
    shutdown: asyncio.Task[None] | None = None
    try:
        async with (
            aiohttp.ClientSession() as session,
            ws_client(hub, session=session) as json_ws,
            ws_client(hub, MSGPACK, session=session) as msgpack_ws,
        ):
            await json_ws.subscribe()
            await msgpack_ws.subscribe()
            started = time.monotonic()
            shutdown = asyncio.create_task(stack.aclose())
            codes = await asyncio.gather(json_ws.close_code(), msgpack_ws.close_code())
            assert codes == [1001, 1001]
            assert time.monotonic() - started < 2
    finally:
        await asyncio.wait_for(shutdown if shutdown is not None else stack.aclose(), 10)


# -- all transports agree ----------------------------------------------------------------------------


async def test_websocket_sse_and_long_poll_deliver_the_same_events_at_the_same_positions(rt_hub, product):
    other = str((await rt_hub.product("SKU-2"))["id"])
    async with ws_client(rt_hub) as ws, sse_stream(rt_hub) as sse:
        subscribed = await ws.subscribe()
        _, ready = await sse.opening()
        assert ready.id == subscribed["position"]
        cursor = ready.id
        changes = [(product, 1), (other, 2), (product, 3), (other, 4), (product, 5)]
        for pid, value in changes:
            await rt_hub.stock(pid, "par-1", value)
        by_ws = await ws.events(5)
        by_sse = [m.json() | {"id": m.id} for m in await sse.inventory(5)]
        by_poll: list[dict[str, Any]] = []
        while len(by_poll) < 5:
            status, body = await poll(rt_hub, cursor=cursor, wait=5)
            assert status == 200, body
            by_poll.extend(body["events"])
            cursor = body["cursor"]
    assert [(e["data"]["product_id"], e["data"]["on_hand"]) for e in by_ws] == changes
    assert [m.pop("id") for m in by_sse] == [e["position"] for e in by_ws]
    assert by_sse == by_ws
    assert by_poll == by_ws
    assert cursor == by_ws[-1]["position"]


# -- metrics -----------------------------------------------------------------------------------------


async def test_metrics_count_connections_messages_and_latencies_by_transport(database_url):
    # A short SSE heartbeat: the hub notices a departed SSE client at its next write.
    async with eu_hub(database_url, sse_heartbeat_seconds=0.2) as hub:
        await _metrics_after_activity(hub, str((await hub.product("SKU-1"))["id"]))


async def _metrics_after_activity(rt_hub, product: str) -> None:
    async with ws_client(rt_hub) as ws, sse_stream(rt_hub) as sse:
        await ws.subscribe()
        _, ready = await sse.opening()
        pending = asyncio.create_task(poll(rt_hub, cursor=ready.id, wait=10))

        async def three_open() -> bool:
            counts = [
                await metric(rt_hub, "synchub_connections", transport=t, region=REGION)
                for t in ("websocket", "sse", "poll")
            ]
            return counts == [1, 1, 1]

        await eventually(three_open, what="one connection of each transport")
        await set_stock_many(rt_hub, product, [1, 2, 3])
        await ws.events(3)
        await sse.inventory(3)
        status, body = await pending
        assert status == 200 and body["events"]
        polled = len(body["events"])
    assert await metric(rt_hub, "synchub_messages_sent_total", transport="websocket") >= 4  # subscribed + 3
    assert await metric(rt_hub, "synchub_messages_sent_total", transport="sse") >= 3
    assert await metric(rt_hub, "synchub_messages_sent_total", transport="poll") >= polled
    # Latency is observed once per write turn (its oldest frame: hub/transports/writes.py), and events
    # the relay publishes together arrive in one turn: at least one sample, not one per event.
    assert await metric(rt_hub, "synchub_delivery_latency_seconds_count", transport="websocket") >= 1
    assert await metric(rt_hub, "synchub_delivery_latency_seconds_count", transport="sse") >= 1
    assert await metric(rt_hub, "synchub_broker_read_lag_seconds_count") >= 1
    assert await metric(rt_hub, "synchub_bytes_sent_total", transport="websocket") > 0

    async def all_closed() -> bool:
        counts = [
            await metric(rt_hub, "synchub_connections", transport=t, region=REGION)
            for t in ("websocket", "sse", "poll")
        ]
        return counts == [0, 0, 0]

    await eventually(all_closed, what="the connection gauges back at zero")
    assert await metric(rt_hub, "synchub_subscriptions", transport="websocket") == 0
    assert await metric(rt_hub, "synchub_subscriptions", transport="sse") == 0
