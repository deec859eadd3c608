"""Devices that edit a cart offline, as an app does: a local replica, deltas kept until acknowledged,
pushed over a hub's WebSocket or REST routes."""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from crdt import codec
from crdt.cart import Cart
from crdt.hlc import Timestamp
from crdt.wire import decode_context, encode_context
from tests.conftest import Hub
from tests.realtime_helpers import WsClient

_MUTATIONS = itertools.count(1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Device:
    """One device's replica of one cart, and the deltas it has not had acknowledged yet."""

    cart_id: str
    replica: str = field(default_factory=lambda: f"dev-{uuid.uuid4().hex[:12]}")
    cart: Cart = field(default_factory=Cart.new)
    outbox: list[tuple[str, Cart]] = field(default_factory=list)
    clock_ms: int = field(default_factory=now_ms)

    def _edit(self, delta: Cart) -> Cart:
        self.cart = self.cart.merge(delta)
        self.outbox.append((f"{self.replica}-m{next(_MUTATIONS)}", delta))
        return delta

    def add(self, sku: str, amount: int = 1) -> Cart:
        return self._edit(self.cart.add(self.replica, sku, amount))

    def set(self, sku: str, quantity: int, wall_ms: int | None = None) -> Cart:
        self.clock_ms = max(self.clock_ms + 1, now_ms()) if wall_ms is None else wall_ms
        return self._edit(
            self.cart.set(self.replica, sku, quantity, Timestamp(self.clock_ms, 0, self.replica))
        )

    def remove(self, sku: str) -> Cart:
        return self._edit(self.cart.remove(self.replica, sku))

    def receive(self, delta: Cart) -> None:
        self.cart = self.cart.merge(delta)

    # -- REST -----------------------------------------------------------------------------------------
    async def sync_rest(self, hub: Hub, token: str) -> dict[str, Any]:
        """POST …/sync with every unacknowledged delta; merges what the hub says the device lacks."""
        pushes = [{"mutation_id": m, "delta": codec.to_dict(d)} for m, d in self.outbox]
        status, body, _ = await hub.call(
            "POST",
            f"/api/v1/carts/{self.cart_id}/sync",
            token=token,
            json={"context": encode_context(self.cart.context), "pushes": pushes},
        )
        assert status == 200, body
        acked = {a["mutation_id"] for a in body["acks"] if a["status"] in ("applied", "duplicate")}
        self.outbox = [(m, d) for m, d in self.outbox if m not in acked]
        if body["delta"] is not None:
            self.receive(codec.from_dict(body["delta"]))
        assert decode_context(body["context"]).includes(self.cart.context) or self.outbox
        return dict(body)

    # -- WebSocket ------------------------------------------------------------------------------------
    def delta_wire(self, delta: Cart, binary: bool) -> Any:
        return codec.to_msgpack(delta) if binary else codec.to_dict(delta)

    async def sync_ws(self, client: WsClient) -> dict[str, Any]:
        reply = await client.request(
            {"type": "sync", "id": "s", "cart": self.cart_id, "context": encode_context(self.cart.context)}
        )
        assert reply["type"] == "synced", reply
        if reply["delta"] is not None:
            raw = reply["delta"]
            self.receive(codec.from_msgpack(raw) if client.binary else codec.from_dict(raw))
        return reply

    async def push_ws(self, client: WsClient) -> list[dict[str, Any]]:
        """Push every unacknowledged delta; return the replies (acks or errors), events skipped."""
        replies = []
        for mutation_id, delta in list(self.outbox):
            await client.send(
                {
                    "type": "push",
                    "id": mutation_id,
                    "cart": self.cart_id,
                    "mutation_id": mutation_id,
                    "delta": self.delta_wire(delta, client.binary),
                }
            )
            while True:
                reply = await client.recv()
                if reply["type"] != "event":
                    break
            assert reply.get("id") == mutation_id, reply
            replies.append(reply)
            if reply["type"] == "ack":
                self.outbox.remove((mutation_id, delta))
        return replies


def event_delta(event: dict[str, Any], binary: bool) -> Cart:
    raw = event["data"]["delta"]
    decoded = codec.from_msgpack(raw) if binary else codec.from_dict(raw)
    assert isinstance(decoded, Cart)
    return decoded
