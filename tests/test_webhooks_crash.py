"""A hub killed with SIGKILL in the middle of delivering webhooks loses none: once a hub runs again on the
same PostgreSQL and Redis, the receiver has every event, duplicates only under one webhook-id, in order
per key, every signature verified by the Standard Webhooks library.

The hub is a real process (``python -m hub.cli serve``, tests/cluster_helpers.py); the receiver is a real
HTTP server in this process, slow enough (a few ms a request) that the kill lands while deliveries are
under way. The restarted hub is another process with another lease holder: it takes the endpoint over
once the dead one's lease expires (``--webhook-lease-seconds 3``), resumes from the stored stream
positions, and sends again what was sent but not recorded as delivered.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import aiohttp

from hub.pii import new_key_spec
from tests.cluster_helpers import Node, start_node
from tests.conftest import redis_url, token
from tests.webhook_helpers import receiver

PRODUCTS = 5
CHANGES = 60  # per product: 300 stock events
WEBHOOK_FLAGS = (
    "--webhook-allow-hosts=127.0.0.1",
    "--webhook-lease-seconds=3",
    "--webhook-timeout-seconds=2",
)


async def _node(name: str, pg: str, prefix: str, keys: str) -> Node:
    return await start_node(name, pg, redis_url(), prefix, extra=(*WEBHOOK_FLAGS, f"--pii-keys={keys}"))


async def test_a_hub_killed_mid_delivery_loses_no_webhook_and_duplicates_only_under_one_id(
    pg: str, redis_prefix: str
) -> None:
    keys = new_key_spec("crash")  # both processes must decrypt the endpoint's secret
    admin = {"Authorization": f"Bearer {token('root', 'admin')}"}
    async with receiver() as target:
        target.delay = 0.03  # ~170 deliveries a second over 5 keys: the 300 take a couple of seconds
        node = await _node("webhooks-a", pg, redis_prefix, keys)
        try:
            async with aiohttp.ClientSession(headers=admin) as session:

                async def call(method: str, path: str, body: object) -> dict[str, object]:
                    async with session.request(method, node.base + path, json=body) as response:
                        assert response.status in (200, 201), await response.text()
                        return dict(await response.json())

                await call("POST", "/api/v1/warehouses", {"id": "par-1", "region": "eu", "name": "Paris"})
                products = [
                    str(
                        (
                            await call(
                                "POST", "/api/v1/products", {"sku": f"K-{n}", "name": "k", "price": "1.00"}
                            )
                        )["id"]
                    )
                    for n in range(PRODUCTS)
                ]
                made = await call(
                    "POST", "/api/v1/webhooks", {"url": target.url, "events": [{"type": "stock.changed"}]}
                )
                target.secret = str(made["secret"])

                async def changes(product: str) -> None:
                    for _ in range(CHANGES):
                        await call(
                            "POST", f"/api/v1/products/{product}/inventory/par-1/adjustments", {"delta": 1}
                        )

                await asyncio.gather(*(changes(p) for p in products))
            # every change committed and acknowledged; now kill the hub while it is delivering them
            for _ in range(2000):
                if len(target.received) >= 40:
                    break
                await asyncio.sleep(0.005)
            delivered_before = len(target.received)
            await node.kill()
            assert 40 <= delivered_before < PRODUCTS * CHANGES, delivered_before
        finally:
            await node.kill()

        restarted = await _node("webhooks-b", pg, redis_prefix, keys)
        try:

            def complete() -> bool:
                seen = defaultdict(set)
                for r in target.received:
                    if r.answered == "ok":
                        seen[r.body["data"]["product_id"]].add(r.body["data"]["version"])
                return len(seen) == PRODUCTS and all(v == set(range(1, CHANGES + 1)) for v in seen.values())

            await target.wait_until(complete, within=60, what="every stock event delivered after the restart")
        finally:
            await restarted.stop()

    assert all(r.verified for r in target.received), "a signature failed"
    ids_of: dict[tuple[str, int], set[str]] = defaultdict(set)
    versions_of: dict[str, list[int]] = defaultdict(list)
    for r in target.received:
        data = r.body["data"]
        ids_of[(data["product_id"], data["version"])].add(r.webhook_id)
        versions_of[data["product_id"]].append(data["version"])
    assert len(ids_of) == PRODUCTS * CHANGES  # none lost
    assert all(len(ids) == 1 for ids in ids_of.values()), "an event went out under two webhook-ids"
    for product, versions in versions_of.items():
        assert versions == sorted(versions), f"out of order for {product}"
    duplicates = len(target.received) - len(ids_of)
    print(
        f"\n{len(target.received)} requests for {len(ids_of)} events ({duplicates} sent again after the kill)"
    )
