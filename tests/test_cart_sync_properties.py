"""A property test through two running nodes (PostgreSQL + Redis): devices of one user edit a cart at
random, go offline, come back on another node or transport; after healing, every device's cart, and
the hub's, equals the reference — the join of every edit any device made (crdt/cart.py's rules)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt import codec
from crdt.cart import Cart
from crdt.wire import encode_context
from tests.cart_helpers import Device
from tests.cluster_helpers import Node
from tests.realtime_helpers import JSON, MSGPACK, WsClient
from tests.test_cart_cluster import ALICE, SKUS, cluster, whole_state

pytestmark = pytest.mark.slow
TRANSPORTS = ("ws-json", "ws-msgpack", "rest")
DEVICES = 3

edit = st.tuples(
    st.just("edit"),
    st.integers(0, DEVICES - 1),
    st.sampled_from(("add", "set", "remove")),
    st.sampled_from(SKUS[:3]),
    st.integers(0, 5),
)
offline = st.tuples(st.just("offline"), st.integers(0, DEVICES - 1))
online = st.tuples(
    st.just("online"), st.integers(0, DEVICES - 1), st.integers(0, 1), st.sampled_from(TRANSPORTS)
)
steps = st.lists(st.one_of(edit, edit, offline, online), min_size=4, max_size=24)


@dataclass
class Phone:
    """A device and its connection: a WebSocket, REST calls, or none (offline)."""

    device: Device
    nodes: list[Node]
    http: aiohttp.ClientSession
    node: int = 0
    transport: str | None = None  # None: offline
    ws: WsClient | None = None
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    made: list[Cart] = field(default_factory=list)

    async def go_online(self, node: int, transport: str) -> None:
        await self.go_offline()
        self.node, self.transport = node, transport
        if transport != "rest":
            protocol = MSGPACK if transport == "ws-msgpack" else JSON
            raw = await self._stack.enter_async_context(
                self.http.ws_connect(
                    self.nodes[node].ws,
                    protocols=(protocol,),
                    headers={"Authorization": f"Bearer {ALICE}"},
                    heartbeat=None,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2),
                )
            )
            self.ws = WsClient(raw, binary=protocol == MSGPACK)
        await self.exchange()

    async def go_offline(self) -> None:
        self.ws = None
        self.transport = None
        await self._stack.aclose()
        self._stack = contextlib.AsyncExitStack()

    async def exchange(self) -> None:
        """Push what is not acknowledged, then take what the hub has that this device lacks."""
        if self.transport is None:
            return
        if self.ws is not None:
            for reply in await self.device.push_ws(self.ws):
                assert reply["type"] == "ack", reply
            await self.device.sync_ws(self.ws)
            return
        pushes = [{"mutation_id": m, "delta": codec.to_dict(d)} for m, d in self.device.outbox]
        async with self.http.post(
            f"{self.nodes[self.node].base}/api/v1/carts/{self.device.cart_id}/sync",
            json={"context": encode_context(self.device.cart.context), "pushes": pushes},
            headers={"Authorization": f"Bearer {ALICE}"},
        ) as response:
            body = await response.json()
            assert response.status == 200, body
        assert all(a["status"] in ("applied", "duplicate") for a in body["acks"]), body
        self.device.outbox.clear()
        if body["delta"] is not None:
            self.device.receive(codec.from_dict(body["delta"]))

    async def edit(self, kind: str, sku: str, amount: int) -> None:
        if kind == "add":
            self.made.append(self.device.add(sku, max(1, amount)))
        elif kind == "set":
            self.made.append(self.device.set(sku, amount))
        else:
            self.made.append(self.device.remove(sku))
        await self.exchange()


@pytest.fixture
async def nodes(pg: str, redis_prefix: str) -> AsyncIterator[list[Node]]:
    async with cluster(pg, redis_prefix) as running:
        yield running


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps)
async def test_devices_that_edit_disconnect_and_switch_nodes_converge_to_the_reference(
    nodes: list[Node], script: list[Any]
) -> None:
    cart_id = str(uuid.uuid4())
    async with aiohttp.ClientSession() as http:
        phones = [Phone(Device(cart_id), nodes, http) for _ in range(DEVICES)]
        try:
            for step in script:
                phone = phones[step[1]]
                if step[0] == "edit":
                    await phone.edit(*step[2:])
                elif step[0] == "offline":
                    await phone.go_offline()
                else:
                    await phone.go_online(step[2], step[3])
            # Heal: everyone comes back (device i on node i % 2), twice, so each hears the others' edits.
            for _ in range(2):
                for index, phone in enumerate(phones):
                    await phone.go_online(index % 2, phone.transport or TRANSPORTS[index])
        finally:
            for phone in phones:
                await phone.go_offline()
    reference = Cart.new()
    for phone in phones:
        for delta in phone.made:
            reference = reference.merge(delta)
    for phone in phones:
        assert phone.device.cart == reference
        assert phone.device.outbox == []
    assert await whole_state(nodes[0], cart_id) == reference
