"""A hub killed with SIGKILL between commit and publish loses no stock event.

The hub runs as a real process (``python -m hub.cli serve``) with its relay off, so nothing it
commits can have been published before the kill. After the kill, a relay started on the same
database must deliver every committed change, in version order, with no gap.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import orjson

from storage.factory import open_store
from sync.broker import Publication
from sync.broker_memory import MemoryBroker
from sync.channels import inventory_stream
from sync.relay import OutboxRelay
from tests.cluster_helpers import start_node
from tests.conftest import token


async def test_sigkill_after_commit_loses_no_event(database_url: str) -> None:
    node = await start_node("crashing", database_url, extra=("--no-relay",))
    base = node.base
    admin = {"Authorization": f"Bearer {token('root', 'admin')}"}
    acknowledged: list[int] = []
    try:
        async with aiohttp.ClientSession(headers=admin) as session:
            async with session.post(
                base + "/api/v1/warehouses", json={"id": "par-1", "region": "eu", "name": "Paris"}
            ) as r:
                assert r.status == 201
            async with session.post(
                base + "/api/v1/products", json={"sku": "CRASH-1", "name": "Crash", "price": "1.00"}
            ) as r:
                product_id = (await r.json())["id"]

            async def adjust() -> None:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.post(
                        f"{base}/api/v1/products/{product_id}/inventory/par-1/adjustments", json={"delta": 1}
                    ) as r:
                        if r.status == 200:
                            acknowledged.append((await r.json())["version"])
                            if len(acknowledged) >= 50:
                                enough.set()

            enough = asyncio.Event()
            burst = [asyncio.create_task(adjust()) for _ in range(300)]
            await asyncio.wait_for(enough.wait(), timeout=30)
            await node.kill()  # SIGKILL mid-burst: some requests committed, some never will
            await asyncio.gather(*burst)
    finally:
        await node.kill()

    assert 50 <= len(acknowledged) < 300
    store = open_store(database_url)
    await store.open()
    try:
        inventory = await store.get_inventory(product_id)
        committed_version = inventory[0].version
        broker = MemoryBroker()
        delivered: list[int] = []

        def record(publication: Publication) -> None:
            delivered.append(orjson.loads(publication.data)["version"])

        broker.subscribe(inventory_stream("eu"), record)
        relay = OutboxRelay(store, broker)
        while await relay.relay_once():
            pass
    finally:
        await store.close()
    assert delivered == list(range(1, committed_version + 1))  # every committed change, in order, once
    assert set(acknowledged) <= set(delivered)  # in particular every one the client was told about
    assert inventory[0].on_hand == committed_version  # the first +1 created the row at version 1
