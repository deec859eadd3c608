"""Carts through a running hub over real sockets: devices edit offline, reconnect over WebSocket (JSON
and MessagePack) or REST + long-poll/SSE, and converge to the cart rules' value; checkout reserves the
stock once; every refusal is a coded error that changes nothing; only the owner follows a cart."""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import Any

import orjson
import pytest

from crdt import codec
from crdt.cart import Cart
from crdt.hlc import Timestamp
from crdt.wire import encode_context
from tests.cart_helpers import Device, event_delta, now_ms
from tests.conftest import Hub, token
from tests.realtime_helpers import JSON, MSGPACK, eu_hub, poll, sse_stream, ws_client

SKUS = ("TEA", "SOAP", "MASK", "LIP")


async def catalog(hub: Hub, stock: int = 10) -> dict[str, str]:
    """The SKUs as products with ``stock`` units each in warehouse par-1; sku → product id."""
    await hub.warehouse("par-1")
    ids = {}
    for sku in SKUS:
        product = await hub.product(sku)
        await hub.stock(product["id"], "par-1", stock)
        ids[sku] = product["id"]
    return ids


async def get_cart(hub: Hub, cart_id: str, who: str | None = None) -> dict[str, Any]:
    status, body, _ = await hub.call("GET", f"/api/v1/carts/{cart_id}", token=who or hub.alice)
    assert status == 200, body
    return dict(body)


async def op(hub: Hub, cart_id: str, who: str | None = None, **fields: Any) -> tuple[int, Any]:
    body = {"device_id": "web-1", "mutation_id": f"op-{uuid.uuid4().hex}", **fields}
    status, reply, _ = await hub.call(
        "POST", f"/api/v1/carts/{cart_id}/ops", token=who or hub.alice, json=body
    )
    return status, reply


async def checkout(hub: Hub, cart_id: str, key: str, who: str | None = None) -> tuple[int, Any, Any]:
    return await hub.call(
        "POST", f"/api/v1/carts/{cart_id}/checkout", token=who or hub.alice, headers={"Idempotency-Key": key}
    )


def auth(bearer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {bearer}"}


# -- the whole story ---------------------------------------------------------------------------------


async def test_two_offline_devices_on_different_transports_converge_to_the_cart_rules_value(hub):
    await catalog(hub)
    cart_id = str(uuid.uuid4())
    phone, laptop = Device(cart_id), Device(cart_id)

    async with ws_client(hub, MSGPACK, headers=auth(hub.alice)) as ws:
        # Online: the phone fills the cart, the laptop (REST) catches up.
        await phone.sync_ws(ws)
        phone.add("TEA")
        phone.add("SOAP")
        phone.add("MASK", 2)
        assert [r["type"] for r in await phone.push_ws(ws)] == ["ack"] * 3
        await laptop.sync_rest(hub, hub.alice)
        assert laptop.cart == phone.cart
        stale = copy.deepcopy(laptop)  # a third device that goes to sleep holding MASK's old entries

        # Offline on both: concurrent adds, set 5 (later) vs set 2, a set with a concurrent add,
        # a remove with a concurrent new add.
        phone.add("TEA")
        laptop.add("TEA")
        laptop.set("SOAP", 2, wall_ms=now_ms())
        phone.set("SOAP", 5, wall_ms=now_ms() + 1000)
        phone.set("LIP", 3)
        laptop.add("LIP")
        laptop.remove("MASK")
        phone.add("MASK")
        expected = phone.cart.merge(laptop.cart)

        # Reconnect: the phone over WebSocket MessagePack, the laptop over REST.
        assert {r["status"] for r in await phone.push_ws(ws)} == {"applied"}
        await laptop.sync_rest(hub, hub.alice)
        await phone.sync_ws(ws)
        await laptop.sync_rest(hub, hub.alice)

    assert phone.cart == laptop.cart == expected
    value = expected.value()
    assert value["TEA"] == 3 and value["MASK"] == 1 and value["LIP"] == 4 and value["SOAP"] == 5
    cart = await get_cart(hub, cart_id)
    assert cart["value"] == value
    assert cart["conflicts"] == {"SOAP": [2]}  # the loser of set 5 / set 2, shown
    assert cart["status"] == "open" and cart["owner"] == "alice"

    # The stale device reconnects with its whole old state: the removed MASK line does not come back.
    stale.outbox = [("stale-whole-state", stale.cart)]
    await stale.sync_rest(hub, hub.alice)
    assert (await get_cart(hub, cart_id))["value"] == value
    assert stale.cart.value() == value


async def test_a_push_is_acked_once_committed_and_reaches_the_other_devices_on_every_transport(hub):
    await catalog(hub)
    cart_id = str(uuid.uuid4())
    phone, tablet = Device(cart_id), Device(cart_id)
    async with (
        ws_client(hub, JSON, headers=auth(hub.alice)) as ws,
        ws_client(hub, MSGPACK, headers=auth(hub.alice)) as other,
    ):
        await phone.sync_ws(ws)
        status, first, _ = await hub.call("GET", f"/api/v1/carts/{cart_id}", token=hub.alice)
        assert status == 200 and first["version"] == 0
        status, polled = await poll(hub, f"cart:{cart_id}", wait=0, headers=auth(hub.alice))
        assert status == 200, polled
        cursor = polled["cursor"]
        await other.subscribe(f"cart:{cart_id}")
        async with sse_stream(hub, f"cart:{cart_id}", headers=auth(hub.alice)) as sse:
            delta = phone.add("TEA", 2)
            (ack,) = await phone.push_ws(ws)
            assert ack["type"] == "ack" and ack["status"] == "applied" and ack["version"] == 1
            # Acknowledged means durable: the cart as read back holds it.
            assert (await get_cart(hub, cart_id))["value"] == {"TEA": 2}

            (event,) = await other.events(1)
            assert event["channel"] == f"cart:{cart_id}"
            assert event["data"]["type"] == "cart.delta" and event["data"]["version"] == 1
            assert isinstance(event["data"]["delta"], bytes)  # MessagePack frames: the codec's bytes
            assert event_delta(event, binary=True) == delta  # the delta, not the whole state
            tablet.receive(event_delta(event, binary=True))
            assert tablet.cart.value() == {"TEA": 2}

            await sse.opening()
            message = await sse.next_event()
            assert message.event == "cart"
            data = orjson.loads(message.data)
            assert codec.from_dict(data["data"]["delta"]) == delta
        status, polled = await poll(hub, f"cart:{cart_id}", cursor=cursor, wait=5, headers=auth(hub.alice))
        assert status == 200, polled
        assert [e["data"]["mutation_id"] for e in polled["events"]] == [ack["mutation_id"]]

        # The same mutation id again: acknowledged as a duplicate, applied once.
        await ws.send(
            {
                "type": "push",
                "id": "again",
                "cart": cart_id,
                "mutation_id": ack["mutation_id"],
                "delta": codec.to_dict(delta),
            }
        )
        again = await ws.recv()
        assert (again["type"], again["status"], again["version"]) == ("ack", "duplicate", 1)
        assert (await get_cart(hub, cart_id))["version"] == 1


async def test_a_plain_client_edits_through_ops_and_the_hub_mints_its_dots(hub):
    await catalog(hub)
    cart_id = str(uuid.uuid4())
    status, reply = await op(hub, cart_id, op="add", sku="TEA", quantity=2)
    assert status == 200, reply
    assert reply["ack"]["status"] == "applied" and reply["cart"]["value"] == {"TEA": 2}
    status, reply = await op(hub, cart_id, op="set", sku="TEA", quantity=5)
    assert status == 200 and reply["cart"]["value"] == {"TEA": 5}
    status, reply = await op(hub, cart_id, op="add", sku="SOAP")
    assert status == 200 and reply["cart"]["value"] == {"TEA": 5, "SOAP": 1}
    status, reply = await op(hub, cart_id, op="remove", sku="TEA")
    assert status == 200 and reply["cart"]["value"] == {"SOAP": 1}
    # A retried edit (same mutation id) applies once.
    body = {"device_id": "web-1", "mutation_id": "retry-me", "op": "add", "sku": "SOAP"}
    for expected in ("applied", "duplicate"):
        status, reply, _ = await hub.call("POST", f"/api/v1/carts/{cart_id}/ops", token=hub.alice, json=body)
        assert status == 200 and reply["ack"]["status"] == expected
    cart = await get_cart(hub, cart_id)
    assert cart["value"] == {"SOAP": 2}
    # A device with a replica merges the plain client's edits by the same rules.
    device = Device(cart_id)
    await device.sync_rest(hub, hub.alice)
    assert device.cart.value() == {"SOAP": 2}


async def test_get_cart_answers_not_modified_for_its_etag(hub):
    await catalog(hub)
    cart_id = str(uuid.uuid4())
    await op(hub, cart_id, op="add", sku="TEA")
    status, body, headers = await hub.call("GET", f"/api/v1/carts/{cart_id}", token=hub.alice)
    assert status == 200
    etag = headers["ETag"]
    status, _, _ = await hub.call(
        "GET", f"/api/v1/carts/{cart_id}", token=hub.alice, headers={"If-None-Match": etag}
    )
    assert status == 304
    await op(hub, cart_id, op="add", sku="TEA")
    status, body, headers = await hub.call(
        "GET", f"/api/v1/carts/{cart_id}", token=hub.alice, headers={"If-None-Match": etag}
    )
    assert status == 200 and headers["ETag"] != etag and body["value"] == {"TEA": 2}


# -- checkout ----------------------------------------------------------------------------------------


async def test_checkout_reserves_once_and_a_later_offline_edit_is_listed_as_rejected(hub):
    ids = await catalog(hub, stock=10)
    cart_id = str(uuid.uuid4())
    phone = Device(cart_id)
    phone.add("TEA", 2)
    phone.add("SOAP")
    await phone.sync_rest(hub, hub.alice)

    async with ws_client(hub, JSON, headers=auth(hub.alice)) as ws:
        await ws.subscribe("user:alice")
        status, body, headers = await checkout(hub, cart_id, "order-1")
        assert status == 201, body
        assert headers["Idempotent-Replayed"] == "false"
        reservation = body["reservation"]
        assert headers["Location"] == f"/api/v1/reservations/{reservation['id']}"
        status, stored, _ = await hub.call("GET", headers["Location"], token=hub.alice)
        assert status == 200 and stored == reservation  # rendered as GET renders it
        assert reservation["status"] == "pending" and reservation["owner"] == "alice"
        assert sorted((ln["product_id"], ln["quantity"]) for ln in reservation["lines"]) == sorted(
            [(ids["TEA"], 2), (ids["SOAP"], 1)]
        )
        assert body["cart"]["status"] == "checked_out"
        assert body["cart"]["reservation_id"] == reservation["id"]
        events = await ws.events(2)
        assert {e["data"]["type"] for e in events} == {"reservation.created", "cart.status"}
        assert all(e["channel"] == "user:alice" for e in events)

    # The same key replays the outcome; the stock was reserved once.
    status, again, headers = await checkout(hub, cart_id, "order-1")
    assert status == 201 and headers["Idempotent-Replayed"] == "true"
    assert again["reservation"]["id"] == reservation["id"]
    status, levels, _ = await hub.call("GET", f"/api/v1/products/{ids['TEA']}/inventory")
    assert status == 200
    assert [(lv["reserved"], lv["available"]) for lv in levels["warehouses"]] == [(2, 8)]
    # Another key on a checked-out cart: a coded conflict, nothing reserved again.
    status, body, _ = await checkout(hub, cart_id, "order-2")
    assert status == 409 and body["code"] == "cart_closed"

    # The phone had not heard of the checkout: its edit is kept, listed as rejected, not applied.
    phone.add("LIP")
    replies = await phone.sync_rest(hub, hub.alice)
    assert replies["acks"][0]["status"] == "applied"
    cart = await get_cart(hub, cart_id)
    assert cart["status"] == "checked_out"
    assert cart["value"] == {"TEA": 2, "SOAP": 1}
    assert [(e["sku"], e["kind"]) for e in cart["rejected_edits"]] == [("LIP", "add")]
    # A plain client's edit after the checkout is refused with a code.
    status, reply = await op(hub, cart_id, op="add", sku="TEA")
    assert status == 409 and reply["code"] == "cart_closed"


async def test_a_checkout_without_enough_stock_reserves_nothing_and_leaves_the_cart_open(hub):
    ids = await catalog(hub, stock=1)
    cart_id = str(uuid.uuid4())
    await op(hub, cart_id, op="add", sku="TEA", quantity=1)
    await op(hub, cart_id, op="add", sku="SOAP", quantity=3)
    status, body, _ = await checkout(hub, cart_id, "short-1")
    assert status == 409 and body["code"] == "insufficient_stock", body
    assert (await get_cart(hub, cart_id))["status"] == "open"
    status, levels, _ = await hub.call("GET", f"/api/v1/products/{ids['TEA']}/inventory")
    assert [lv["reserved"] for lv in levels["warehouses"]] == [0]
    empty = str(uuid.uuid4())
    await hub.call("POST", f"/api/v1/carts/{empty}/sync", token=hub.alice, json={})
    status, body, _ = await checkout(hub, empty, "empty-1")
    assert status == 422 and body["code"] == "empty_cart"
    status, body, _ = await hub.call("POST", f"/api/v1/carts/{cart_id}/checkout", token=hub.alice)
    assert status == 400 and body["code"] == "idempotency_key_required"


# -- who may read, push, subscribe and resume --------------------------------------------------------


async def test_another_users_token_cannot_read_push_subscribe_or_resume_a_cart_on_any_transport(hub):
    await catalog(hub)
    cart_id = str(uuid.uuid4())
    await op(hub, cart_id, op="add", sku="TEA")
    before = await get_cart(hub, cart_id)
    status, polled = await poll(hub, f"cart:{cart_id}", wait=0, headers=auth(hub.alice))
    assert status == 200
    alice_cursor = polled["cursor"]

    bob = hub.bob
    assert (await hub.call("GET", f"/api/v1/carts/{cart_id}", token=bob))[:2][0] == 404
    status, body, _ = await hub.call("GET", f"/api/v1/carts/{cart_id}", token=bob)
    assert body["code"] == "cart_not_found"
    thief = Device(cart_id)
    thief.add("LIP")
    pushes = [{"mutation_id": "steal", "delta": codec.to_dict(thief.outbox[0][1])}]
    status, body, _ = await hub.call(
        "POST", f"/api/v1/carts/{cart_id}/sync", token=bob, json={"pushes": pushes}
    )
    assert (status, body["code"]) == (404, "cart_not_found")
    status, body = await op(hub, cart_id, bob, op="add", sku="LIP")
    assert (status, body["code"]) == (404, "cart_not_found")
    status, body, _ = await checkout(hub, cart_id, "bob-1", bob)
    assert (status, body["code"]) == (404, "cart_not_found")

    async with ws_client(hub, JSON, headers=auth(bob)) as ws:
        for channel in (f"cart:{cart_id}", "user:alice"):
            for since in (None, alice_cursor):
                message: dict[str, Any] = {"type": "subscribe", "channel": channel}
                if since:
                    message["since"] = since
                reply = await ws.request(message)
                assert reply["type"] == "error", reply
                assert reply["code"] == (
                    "cart_not_found" if channel.startswith("cart") else "channel_forbidden"
                )
        for kind in ("sync", "push"):
            message = {"type": kind, "cart": cart_id}
            if kind == "sync":
                message["context"] = None
            else:
                message |= {"mutation_id": "steal-ws", "delta": pushes[0]["delta"]}
            reply = await ws.request(message)
            assert (reply["type"], reply["code"]) == ("error", "cart_not_found"), reply

    for channel, code, expected in (
        (f"cart:{cart_id}", "cart_not_found", 404),
        ("user:alice", "channel_forbidden", 403),
    ):
        for cursor in (None, alice_cursor):
            status, body = await poll(hub, channel, cursor=cursor, wait=0, headers=auth(bob))
            assert (status, body["code"]) == (expected, code)
            query = f"last_event_id={cursor}" if cursor else ""
            async with hub.session.get(
                f"{hub.base}/api/v1/sse?channels={channel}" + (f"&{query}" if query else ""),
                headers=auth(bob),
            ) as response:
                assert response.status == expected
                assert (await response.json())["code"] == code
        # And without a token at all.
        status, body = await poll(hub, channel, wait=0)
        assert (status, body["code"]) == (401, "unauthenticated")

    # A service token may read (not edit); nothing above changed the cart.
    service = await get_cart(hub, cart_id, hub.service)
    assert service["value"] == before["value"] == {"TEA": 1}
    status, body = await op(hub, cart_id, hub.service, op="add", sku="LIP")
    assert status == 403
    assert (await get_cart(hub, cart_id))["version"] == before["version"]


async def test_a_replica_id_bound_to_one_user_is_refused_for_another(hub):
    await catalog(hub)
    alice_cart, bob_cart = str(uuid.uuid4()), str(uuid.uuid4())
    device = Device(alice_cart, replica="shared-phone")
    device.add("TEA")
    await device.sync_rest(hub, hub.alice)
    impostor = Device(bob_cart, replica="shared-phone")
    impostor.add("SOAP")
    body = await impostor.sync_rest(hub, hub.bob)
    (ack,) = body["acks"]
    assert (ack["status"], ack["code"]) == ("refused", "foreign_replica")
    assert (await get_cart(hub, bob_cart, hub.bob))["value"] == {}


# -- bad input: a coded error, the cart unchanged -----------------------------------------------------


def _future_set(replica: str) -> Cart:
    return Cart.new().set(replica, "TEA", 2, Timestamp(now_ms() + 3_600_000, 0, replica))


BAD_DELTAS: list[tuple[str, Any, str]] = [
    ("malformed", {"t": "cart", "v": 1, "s": "nonsense"}, "malformed_delta"),
    ("not a cart", codec.to_dict(Cart.new().add("x-1", "TEA")) | {"t": "review"}, "malformed_delta"),
    ("unknown codec version", {"t": "cart", "v": 99, "s": {}}, "unsupported_codec_version"),
    (
        "counter past 2**53",
        {"t": "cart", "v": 1, "s": [[".x-6"], ["TEA", [0, 2**60, 1], []], []]},
        "malformed_delta",
    ),
    ("too many units", codec.to_dict(Cart.new().add("x-2", "TEA", 1000)), "quantity_out_of_range"),
    ("unknown sku", codec.to_dict(Cart.new().add("x-3", "NOPE")), "unknown_sku"),
    ("the hub's replica", codec.to_dict(Cart.new().add("~hub", "TEA")), "foreign_replica"),
    ("clock far ahead", codec.to_dict(_future_set("x-4")), "clock_skew"),
    (
        "a checkout made by a device",
        codec.to_dict(Cart.new().add("x-5", "TEA").close("x-5")),
        "checkout_required",
    ),
]


@pytest.mark.parametrize(("what", "delta", "code"), BAD_DELTAS, ids=[b[0] for b in BAD_DELTAS])
async def test_a_bad_delta_is_a_coded_error_on_every_route_and_changes_nothing(hub, what, delta, code):
    await catalog(hub)
    cart_id = str(uuid.uuid4())
    await op(hub, cart_id, op="add", sku="SOAP")
    before = await get_cart(hub, cart_id)

    status, body, _ = await hub.call(
        "POST",
        f"/api/v1/carts/{cart_id}/sync",
        token=hub.alice,
        json={"pushes": [{"mutation_id": "bad-rest", "delta": delta}]},
    )
    if status == 200:  # decoded, then refused by a cart rule: per push
        assert [(a["status"], a["code"]) for a in body["acks"]] == [("refused", code)], body
    else:
        assert (status, body["code"]) == (400, code), body

    for protocol in (JSON, MSGPACK):
        async with ws_client(hub, protocol, headers=auth(hub.alice)) as ws:
            wire = delta
            if protocol == MSGPACK:
                try:
                    wire = codec.to_msgpack(codec.from_dict(delta))
                except codec.CodecError:
                    wire = orjson.dumps(delta)  # not even decodable: send bytes that are not a delta
            reply = await ws.request(
                {
                    "type": "push",
                    "id": "bad",
                    "cart": cart_id,
                    "mutation_id": f"bad-{protocol}",
                    "delta": wire,
                }
            )
            assert reply["type"] == "error", reply
            if protocol == JSON or code not in ("malformed_delta", "unsupported_codec_version"):
                assert reply["code"] == code, reply
            else:
                assert reply["code"] in ("malformed_delta", "unsupported_codec_version"), reply
    after = await get_cart(hub, cart_id)
    assert (after["value"], after["version"], after["context"]) == (
        before["value"],
        before["version"],
        before["context"],
    )


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"op": "add", "sku": "TEA", "quantity": -1}, 400, "validation_failed"),
        ({"op": "add", "sku": "TEA", "quantity": 0}, 400, "quantity_out_of_range"),
        ({"op": "set", "sku": "TEA", "quantity": 1000}, 400, "validation_failed"),
        ({"op": "set", "sku": "TEA"}, 400, "quantity_required"),
        ({"op": "remove", "sku": "TEA", "quantity": 1}, 400, "unexpected_quantity"),
        ({"op": "add", "sku": "NOPE"}, 422, "unknown_sku"),
        ({"op": "add", "sku": "TEA", "colour": "red"}, 400, "validation_failed"),
        ({"op": "explode", "sku": "TEA"}, 400, "validation_failed"),
    ],
)
async def test_a_bad_plain_edit_is_a_coded_error_and_changes_nothing(hub, fields, status, code):
    await catalog(hub)
    cart_id = str(uuid.uuid4())
    await op(hub, cart_id, op="add", sku="SOAP")
    before = await get_cart(hub, cart_id)
    got, body = await op(hub, cart_id, **fields)
    assert (got, body["code"]) == (status, code), body
    after = await get_cart(hub, cart_id)
    assert (after["value"], after["version"]) == (before["value"], before["version"])


async def test_malformed_sync_requests_are_coded_errors(hub):
    await catalog(hub)
    cart_id = str(uuid.uuid4())
    cases = [
        ({"pushes": "no"}, "bad_request"),
        ({"pushes": [{"mutation_id": "m"}]}, "bad_request"),
        ({"pushes": [{"mutation_id": "", "delta": {}}]}, "invalid_mutation_id"),
        ({"context": {"vv": "x"}}, "malformed_context"),
        ({"context": {}, "extra": 1}, "validation_failed"),
    ]
    for body, code in cases:
        status, reply, _ = await hub.call("POST", f"/api/v1/carts/{cart_id}/sync", token=hub.alice, json=body)
        assert (status, reply["code"]) == (400, code), (body, reply)
    status, reply, _ = await hub.call("POST", "/api/v1/carts/not-a-uuid/sync", token=hub.alice, json={})
    assert status == 400
    async with ws_client(hub, JSON, headers=auth(hub.alice)) as ws:
        reply = await ws.request({"type": "sync", "cart": "nope", "context": None})
        assert (reply["type"], reply["code"]) == ("error", "invalid_cart")
        reply = await ws.request({"type": "push", "cart": cart_id, "mutation_id": "m", "delta": {}, "x": 1})
        assert (reply["type"], reply["code"]) == ("error", "unknown_field")
        reply = await ws.request({"type": "subscribe", "channel": f"cart:{cart_id}", "recover": "latest"})
        assert reply["type"] == "error"
    async with ws_client(hub, JSON) as anonymous:
        reply = await anonymous.request({"type": "sync", "cart": cart_id, "context": None})
        assert (reply["type"], reply["code"]) == ("error", "unauthenticated")


async def test_a_cart_event_reaches_only_that_carts_subscribers(hub):
    await catalog(hub)
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    await op(hub, mine, op="add", sku="TEA")
    await op(hub, other, op="add", sku="TEA")
    async with ws_client(hub, JSON, headers=auth(hub.alice)) as ws:
        await ws.subscribe(f"cart:{mine}")
        await op(hub, other, op="add", sku="SOAP")
        await op(hub, mine, op="add", sku="LIP")
        # (on PostgreSQL the relay publishes after the commit: the first add's delta, version 1, may be
        # published only once the subscription began, and arrive before version 2)
        events = await ws.events(1)
        while events[-1]["data"]["version"] < 2:
            events += await ws.events(1)
        assert {e["data"]["cart_id"] for e in events} == {mine}
        await asyncio.sleep(0.05)
        await ws.assert_nothing_pending()


# -- resync and the user channel ---------------------------------------------------------------------


async def test_a_cart_position_too_old_gets_a_resync_to_the_cart_and_sync_recovers_everything(database_url):
    async with eu_hub(database_url, stream_max_len=5) as hub:
        await hub.product("TEA")
        cart_id = str(uuid.uuid4())
        await op(hub, cart_id, op="add", sku="TEA")
        status, polled = await poll(hub, f"cart:{cart_id}", wait=0, headers=auth(hub.alice))
        old = polled["cursor"]
        for _ in range(8):  # the stream keeps the last 5: the old position is gone
            await op(hub, cart_id, op="add", sku="TEA")
        async with ws_client(hub, MSGPACK, headers=auth(hub.alice)) as ws:
            reply = await ws.request(
                {"type": "subscribe", "id": 1, "channel": f"cart:{cart_id}", "since": old}
            )
            assert (reply["type"], reply["reason"]) == ("resync", "position_expired"), reply
            assert reply["snapshot"] == f"/api/v1/carts/{cart_id}"
            # The state is in the database: a sync from the device's old context gets all of it.
            device = Device(cart_id)
            await device.sync_ws(ws)
            assert device.cart.value() == {"TEA": 9}
        status, body = await poll(hub, f"cart:{cart_id}", cursor=old, wait=0, headers=auth(hub.alice))
        assert (status, body["code"]) == (410, "resync_required")
        assert body["snapshot"] == f"/api/v1/carts/{cart_id}"


async def test_a_users_reservations_changes_are_events_on_their_user_channel(hub):
    ids = await catalog(hub)
    status, polled = await poll(hub, "user:alice", wait=0, headers=auth(hub.alice))
    assert status == 200, polled
    cursor = polled["cursor"]
    created = []
    for n in range(3):
        status, body, _ = await hub.call(
            "POST",
            "/api/v1/reservations",
            token=hub.alice,
            headers={"Idempotency-Key": f"user-{n}"},
            json={"lines": [{"product_id": ids["TEA"], "quantity": 1}]},
        )
        assert status == 201, body
        created.append(body["id"])
    assert (await hub.call("POST", f"/api/v1/reservations/{created[0]}/commit", token=hub.service))[0] == 200
    assert (await hub.call("POST", f"/api/v1/reservations/{created[1]}/release", token=hub.alice))[0] == 200
    # Bob's reservation is not Alice's business.
    status, _, _ = await hub.call(
        "POST",
        "/api/v1/reservations",
        token=hub.bob,
        headers={"Idempotency-Key": "bob-1"},
        json={"lines": [{"product_id": ids["SOAP"], "quantity": 1}]},
    )
    assert status == 201
    events: list[dict[str, Any]] = []
    while len(events) < 5:
        status, body = await poll(hub, "user:alice", cursor=cursor, wait=5, headers=auth(hub.alice))
        assert status == 200, body
        events += body["events"]
        cursor = body["cursor"]
    got = [(e["data"]["type"], e["data"]["reservation"]["id"]) for e in events]
    assert got == [
        ("reservation.created", created[0]),
        ("reservation.created", created[1]),
        ("reservation.created", created[2]),
        ("reservation.committed", created[0]),
        ("reservation.released", created[1]),
    ]
    assert [e["data"]["version"] for e in events] == [1, 2, 3, 4, 5]
    assert {e["channel"] for e in events} == {"user:alice"}


async def test_a_delta_with_a_fractional_number_is_malformed_not_a_server_error(hub):
    await catalog(hub)
    cart_id = str(uuid.uuid4())
    delta = codec.to_dict(Cart.new().add("frac-1", "TEA"))
    text = orjson.dumps({"pushes": [{"mutation_id": "f-1", "delta": delta}]}).decode()
    text = text.replace("[0,1,1]", "[0,1,1.5]", 1)
    assert "1.5" in text
    status, body, _ = await hub.call(
        "POST",
        f"/api/v1/carts/{cart_id}/sync",
        token=hub.alice,
        data=text,
        headers={"Content-Type": "application/json"},
    )
    assert (status, body["code"]) == (400, "malformed_delta"), body


async def test_an_sse_stream_ends_when_its_token_expires(hub):
    await catalog(hub)
    cart_id = str(uuid.uuid4())
    await op(hub, cart_id, op="add", sku="TEA")
    short = token("alice", "customer", ttl=2)
    async with sse_stream(hub, f"cart:{cart_id}", headers=auth(short)) as sse:
        await sse.opening()
        closing = await sse.next_event(within=5)
        if closing.event == "cart":  # the add's delta, when the relay published it after the stream began
            closing = await sse.next_event(within=5)
        assert closing.event == "close"
        assert orjson.loads(closing.data) == {"code": "token_expired", "reconnect": True}
        assert await sse.next(within=5) is None  # and the stream ends


async def test_a_cart_is_followed_on_the_nodes_of_its_own_region(hub, database_url):
    await catalog(hub)
    cart_id = str(uuid.uuid4())
    async with eu_hub(database_url, warehouses=()) as eu:
        status, reply = await op(eu, cart_id, op="add", sku="TEA")  # made in region eu
        assert status == 200, reply
        status, body = await poll(hub, f"cart:{cart_id}", wait=0, headers=auth(hub.alice))
        assert (status, body["code"]) == (400, "channel_not_served")
        status, body = await poll(eu, f"cart:{cart_id}", wait=0, headers=auth(eu.alice))
        assert status == 200, body


async def test_a_pushing_connection_gets_its_ack_and_not_its_own_delta_back(hub):
    await catalog(hub)
    cart_id = str(uuid.uuid4())
    phone, tablet = Device(cart_id), Device(cart_id)
    async with (
        ws_client(hub, MSGPACK, headers=auth(hub.alice)) as ws,
        ws_client(hub, JSON, headers=auth(hub.alice)) as other,
    ):
        await phone.sync_ws(ws)
        await ws.subscribe(f"cart:{cart_id}")
        await other.subscribe(f"cart:{cart_id}")
        phone.add("TEA")
        (ack,) = await phone.push_ws(ws)
        assert ack["type"] == "ack"
        (event,) = await other.events(1)
        assert event["data"]["mutation_id"] == ack["mutation_id"]
        await ws.assert_nothing_pending()  # the ack stood for it
        # The tablet pushes on its own connection: the phone hears of it.
        tablet.add("SOAP")
        (ack,) = await tablet.push_ws(other)
        (event,) = await ws.events(1)
        assert event["data"]["mutation_id"] == ack["mutation_id"]
        await other.assert_nothing_pending()
        # A plain edit (no connection) reaches both.
        status, _ = await op(hub, cart_id, op="add", sku="LIP")
        assert status == 200
        assert [len(await c.events(1)) for c in (ws, other)] == [1, 1]


async def test_a_sync_answers_only_what_the_device_lacks(hub):
    await catalog(hub)
    cart_id = str(uuid.uuid4())
    laptop, phone = Device(cart_id), Device(cart_id)
    for sku in SKUS:
        laptop.add(sku, 2)
    await laptop.sync_rest(hub, hub.alice)
    await phone.sync_rest(hub, hub.alice)
    assert phone.cart == laptop.cart
    laptop.add("TEA")
    laptop.remove("SOAP")
    await laptop.sync_rest(hub, hub.alice)
    async with ws_client(hub, MSGPACK, headers=auth(hub.alice)) as ws:
        reply = await ws.request(
            {"type": "sync", "cart": cart_id, "context": encode_context(phone.cart.context)}
        )
    delta = codec.from_msgpack(reply["delta"])
    assert delta.entry_count() == 1  # the new TEA add: not the lines the phone holds
    phone.receive(delta)
    assert phone.cart == laptop.cart
    assert "SOAP" not in phone.cart.value()  # the remove's cancellation came along
