"""Carts on two `synchub serve` nodes sharing one PostgreSQL and one Redis: devices push through both
nodes at once, a node is killed mid-push, and devices reconnect through the other node and another
transport. Real processes, real sockets, real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from crdt import codec
from crdt.cart import Cart
from crdt.wire import encode_context
from tests.cart_helpers import Device, event_delta
from tests.cluster_helpers import Node, start_node
from tests.conftest import redis_url, token
from tests.realtime_helpers import MSGPACK, WsClient

pytestmark = pytest.mark.slow
ADMIN = token("root", "admin")
ALICE = token("alice", "customer")
SKUS = [f"CART-{i}" for i in range(6)]


@contextlib.asynccontextmanager
async def cluster(database_url: str, prefix: str) -> AsyncIterator[list[Node]]:
    nodes = [await start_node("node-a", database_url, redis_url(), prefix)]
    try:
        nodes.append(await start_node("node-b", database_url, redis_url(), prefix))
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
            for sku in SKUS:
                async with admin.post(
                    nodes[0].base + "/api/v1/products", json={"sku": sku, "name": sku, "price": "1"}
                ) as response:
                    assert response.status == 201, await response.text()
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


@contextlib.asynccontextmanager
async def device_socket(node: Node, protocol: str = MSGPACK) -> AsyncIterator[WsClient]:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            node.ws,
            protocols=(protocol,),
            headers={"Authorization": f"Bearer {ALICE}"},
            heartbeat=None,
            timeout=aiohttp.ClientWSTimeout(ws_close=2),
        ) as ws,
    ):
        yield WsClient(ws, binary=protocol == MSGPACK)


def random_edit(device: Device, rng: random.Random) -> Cart:
    sku = rng.choice(SKUS)
    roll = rng.random()
    if roll < 0.55:
        return device.add(sku, rng.randint(1, 3))
    if roll < 0.85:
        return device.set(sku, rng.randint(0, 9))
    return device.remove(sku)


async def whole_state(node: Node, cart_id: str) -> Cart:
    """The cart as the hub stores it: a sync from an empty context answers the whole state."""
    async with device_socket(node) as ws:
        reply = await ws.request(
            {"type": "sync", "cart": cart_id, "context": encode_context(Cart.new().context)}
        )
    assert reply["type"] == "synced", reply
    state = codec.from_msgpack(reply["delta"]) if reply["delta"] is not None else Cart.new()
    assert isinstance(state, Cart)
    return state


async def collect_events(ws: WsClient, until_version: int, within: float = 20.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not events or events[-1]["data"]["version"] < until_version:
        message = await ws.recv(max(0.1, deadline - loop.time()))
        assert message["type"] == "event", message
        events.append(message)
    return events


async def test_four_devices_pushing_through_two_nodes_at_once_lose_nothing(
    pg: str, redis_prefix: str
) -> None:
    cart_id = str(uuid.uuid4())
    async with cluster(pg, redis_prefix) as nodes:
        devices = [Device(cart_id) for _ in range(4)]
        async with device_socket(nodes[0]) as opener:
            await devices[0].sync_ws(opener)
        async with device_socket(nodes[1]) as watcher:
            await watcher.subscribe(f"cart:{cart_id}")
            pushed: list[Cart] = []

            async def run(index: int) -> None:
                device, rng = devices[index], random.Random(index)
                async with device_socket(nodes[index % 2]) as ws:
                    for _ in range(50):
                        pushed.append(random_edit(device, rng))
                        (reply,) = await device.push_ws(ws)
                        assert reply["type"] == "ack", reply

            await asyncio.gather(*(run(i) for i in range(4)))
            assert len(pushed) == 200
            reference = Cart.new()
            for delta in pushed:
                reference = reference.merge(delta)
            for node in nodes:
                assert await whole_state(node, cart_id) == reference

            # A subscriber on node B saw every change, written through either node, once and in order.
            top = await whole_state_version(nodes[1], cart_id)
            events = await collect_events(watcher, top)
            assert [e["data"]["version"] for e in events] == list(range(1, top + 1))
            seen = Cart.new()
            for event in events:
                seen = seen.merge(event_delta(event, binary=True))
            assert seen == reference


async def whole_state_version(node: Node, cart_id: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{node.base}/api/v1/carts/{cart_id}", headers={"Authorization": f"Bearer {ALICE}"}
        ) as response,
    ):
        assert response.status == 200
        return int((await response.json())["version"])


async def test_a_node_killed_mid_push_loses_no_acked_edit_and_a_retry_applies_once(
    pg: str, redis_prefix: str
) -> None:
    cart_id = str(uuid.uuid4())
    async with cluster(pg, redis_prefix) as nodes:
        device, rng = Device(cart_id), random.Random(7)
        edits = [(f"kill-{n}", random_edit(device, rng)) for n in range(120)]
        device.outbox.clear()
        acked: set[str] = set()
        async with device_socket(nodes[0]) as ws:
            await ws.request({"type": "sync", "cart": cart_id, "context": None})
            # Pipelined: every push is in flight; the node dies after some of them were acknowledged.
            for mutation_id, delta in edits:
                await ws.send(
                    {
                        "type": "push",
                        "id": mutation_id,
                        "cart": cart_id,
                        "mutation_id": mutation_id,
                        "delta": codec.to_msgpack(delta),
                    }
                )
            with contextlib.suppress(Exception):
                while len(acked) < len(edits):
                    reply = await ws.recv(5)
                    if reply["type"] == "ack":
                        acked.add(reply["mutation_id"])
                        if len(acked) == 30:
                            await nodes[0].kill()
        assert 30 <= len(acked) < len(edits), len(acked)

        # Every acknowledged edit survived the kill.
        survived = await whole_state(nodes[1], cart_id)
        for mutation_id, delta in edits:
            if mutation_id in acked:
                assert survived.merge(delta) == survived, mutation_id

        # The device retries everything not acknowledged, with the same mutation ids, on node B.
        retries = {}
        async with device_socket(nodes[1]) as ws:
            for mutation_id, delta in edits:
                if mutation_id in acked:
                    continue
                reply = await ws.request(
                    {
                        "type": "push",
                        "id": mutation_id,
                        "cart": cart_id,
                        "mutation_id": mutation_id,
                        "delta": codec.to_msgpack(delta),
                    }
                )
                assert reply["type"] == "ack", reply
                retries[mutation_id] = reply["status"]
        # Pushes committed but not yet answered when the node died come back as duplicates.
        assert set(retries.values()) <= {"applied", "duplicate"}
        reference = Cart.new()
        for _, delta in edits:
            reference = reference.merge(delta)
        assert await whole_state(nodes[1], cart_id) == reference

        conn = await asyncpg.connect(pg)
        try:
            rows = await conn.fetch(
                "SELECT mutation_id, version FROM cart_mutations WHERE cart_id = $1", cart_id
            )
            cart_version = await conn.fetchval("SELECT version FROM carts WHERE id = $1", cart_id)
        finally:
            await conn.close()
        # Each mutation recorded once; versions are one per change, with no gap and none twice.
        assert sorted(r["mutation_id"] for r in rows) == sorted(m for m, _ in edits)
        changing = sorted({r["version"] for r in rows} - {0})
        assert changing == list(range(1, cart_version + 1))


async def test_devices_on_different_nodes_and_transports_converge(pg: str, redis_prefix: str) -> None:
    cart_id = str(uuid.uuid4())
    async with (
        cluster(pg, redis_prefix) as nodes,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {ALICE}"}) as laptop_http,
    ):
        phone, laptop = Device(cart_id), Device(cart_id)
        phone.add("CART-0")
        async with device_socket(nodes[0], MSGPACK) as ws:
            await phone.sync_ws(ws)
            await phone.push_ws(ws)

        async def laptop_sync() -> dict[str, Any]:
            pushes = [{"mutation_id": m, "delta": codec.to_dict(d)} for m, d in laptop.outbox]
            async with laptop_http.post(
                f"{nodes[1].base}/api/v1/carts/{cart_id}/sync",
                json={"context": encode_context(laptop.cart.context), "pushes": pushes},
            ) as response:
                body = await response.json()
                assert response.status == 200, body
            laptop.outbox.clear()
            if body["delta"] is not None:
                laptop.receive(codec.from_dict(body["delta"]))
            return dict(body)

        await laptop_sync()
        async with laptop_http.get(
            f"{nodes[1].base}/api/v1/poll", params={"channels": f"cart:{cart_id}", "timeout": "0"}
        ) as response:
            cursor = (await response.json())["cursor"]
        # Offline on both.
        phone.set("CART-0", 5)
        laptop.set("CART-0", 2)
        laptop.remove("CART-0")
        laptop.add("CART-1")
        phone.add("CART-2")
        expected = phone.cart.merge(laptop.cart)
        async with device_socket(nodes[0], MSGPACK) as ws:
            assert {r["type"] for r in await phone.push_ws(ws)} == {"ack"}
            # The laptop's long-poll on node B hears the phone's pushes made on node A.
            async with laptop_http.get(
                f"{nodes[1].base}/api/v1/poll",
                params={"channels": f"cart:{cart_id}", "cursor": cursor, "timeout": "10"},
            ) as response:
                polled = await response.json()
                assert response.status == 200, polled
            assert {e["data"]["type"] for e in polled["events"]} == {"cart.delta"}
            for event in polled["events"]:
                laptop.receive(event_delta(event, binary=False))
            await laptop_sync()
            await phone.sync_ws(ws)
        assert phone.cart == laptop.cart == expected
        assert await whole_state(nodes[1], cart_id) == expected
        assert expected.value()["CART-0"] == 5  # the phone's set, concurrent with the laptop's remove
