"""Many nodes: two `synchub serve` processes sharing one PostgreSQL and one Redis form a region.

Clients on WebSocket (JSON and MessagePack), SSE and long-poll are spread over both nodes; stock changes
are written through both. Real processes, real sockets, real Redis and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.cluster_helpers import Client, Node, RedisServer, free_port, start_node, versions_by_key
from tests.conftest import redis_url, token

pytestmark = pytest.mark.slow
ADMIN = {"Authorization": f"Bearer {token('root', 'admin')}"}


@contextlib.asynccontextmanager
async def cluster(database_url: str, redis_url: str, prefix: str) -> AsyncIterator[list[Node]]:
    nodes = [await start_node("node-a", database_url, redis_url, prefix)]
    try:
        nodes.append(await start_node("node-b", database_url, redis_url, prefix))
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def request(nodes: list[Node], method: str, path: str, body: Any = None, start: int = 0) -> Any:
    """Send to the first live node from ``start``, failing over to the next: a write-path client."""
    last_error: Exception | None = None
    async with aiohttp.ClientSession(headers=ADMIN, timeout=aiohttp.ClientTimeout(total=10)) as session:
        for i in range(len(nodes) * 3):
            node = nodes[(start + i) % len(nodes)]
            if node.proc.returncode is not None:
                continue
            try:
                async with session.request(method, node.base + path, json=body) as response:
                    payload = await response.json()
                    assert response.status < 300, payload
                    return payload
            except (aiohttp.ClientError, ConnectionError) as exc:
                last_error = exc
                await asyncio.sleep(0.05)
    raise AssertionError(f"no node answered {method} {path}: {last_error}")


async def seed(nodes: list[Node], products: int = 3) -> list[str]:
    await request(nodes, "POST", "/api/v1/warehouses", {"id": "par-1", "region": "eu", "name": "Paris"})
    ids = []
    for i in range(products):
        product = await request(
            nodes, "POST", "/api/v1/products", {"sku": f"C-{i}", "name": "c", "price": "1"}
        )
        ids.append(product["id"])
    return ids


async def burst(nodes: list[Node], product_ids: list[str], count: int, concurrency: int = 8) -> None:
    queue = list(range(count))

    async def worker() -> None:
        while queue:
            n = queue.pop()
            path = f"/api/v1/products/{product_ids[n % len(product_ids)]}/inventory/par-1/adjustments"
            await request(nodes, "POST", path, {"delta": 1}, start=n)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def final_versions(nodes: list[Node], product_ids: list[str]) -> dict[tuple[str, str], int]:
    versions = {}
    for product_id in product_ids:
        inventory = await request(nodes, "GET", f"/api/v1/products/{product_id}/inventory")
        for row in inventory["warehouses"]:
            versions[(product_id, row["warehouse_id"])] = row["version"]
    return versions


async def start_clients(nodes: list[Node]) -> list[Client]:
    clients = [
        Client("ws-json", nodes, 0),
        Client("ws-msgpack", nodes, 1),
        Client("sse", nodes, 0),
        Client("sse", nodes, 1),
        Client("poll", nodes, 0),
        Client("poll", nodes, 1),
    ]
    for client in clients:
        ready = asyncio.Event()
        client.task = asyncio.create_task(client.run(ready))
        await asyncio.wait_for(ready.wait(), 10)
    return clients


async def settle(clients: list[Client], expected: dict[tuple[str, str], int], timeout: float = 30) -> None:
    async def caught_up() -> None:
        while any(client.versions != expected for client in clients):
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(caught_up(), timeout)
    except TimeoutError:
        # One entry per client: two of one transport (on different nodes) must not merge into one.
        behind = {
            f"{client.transport} from {client.nodes[client.start_index % len(client.nodes)].name}"
            f" (resyncs {client.resyncs}, reconnects {client.reconnects})": {
                key: (client.versions.get(key), last)
                for key, last in expected.items()
                if client.versions.get(key) != last
            }
            for client in clients
            if client.versions != expected
        }
        raise AssertionError(f"not caught up within {timeout} s (key: (has, expected)): {behind}") from None
    finally:
        for client in clients:
            client.stopping = True
        for client in clients:
            assert client.task is not None
            client.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client.task


def assert_every_event_once_in_order(client: Client, expected: dict[tuple[str, str], int]) -> None:
    assert versions_by_key(client.events) == {
        key: list(range(1, last + 1)) for key, last in expected.items()
    }, client.transport


async def test_a_burst_through_both_nodes_reaches_every_client_once_in_order(
    pg: str, redis_prefix: str
) -> None:
    async with cluster(pg, redis_url(), redis_prefix) as nodes:
        clients = await start_clients(nodes)
        product_ids = await seed(nodes)
        await burst(nodes, product_ids, 150)
        expected = await final_versions(nodes, product_ids)
        await settle(clients, expected)
    assert sum(expected.values()) == 150 + len(product_ids) - len(product_ids)  # first +1 creates the row
    for client in clients:
        assert_every_event_once_in_order(client, expected)
        assert client.resyncs == 0


async def test_clients_of_a_killed_node_resume_on_the_other_without_loss_or_duplicate(
    pg: str, redis_prefix: str
) -> None:
    async with cluster(pg, redis_url(), redis_prefix) as nodes:
        clients = await start_clients(nodes)
        product_ids = await seed(nodes)
        await burst(nodes, product_ids, 60)
        killed = asyncio.create_task(burst(nodes, product_ids, 120))
        await asyncio.sleep(0.3)
        await nodes[0].kill()  # kill -9, mid-burst
        await killed
        expected = await final_versions(nodes, product_ids)
        await settle(clients, expected)
    for client in clients:
        assert_every_event_once_in_order(client, expected)
    moved = [c for c in clients if c.start_index == 0]
    assert all(c.reconnects >= 1 for c in moved)  # they really did move to node B


async def test_a_redis_restart_mid_stream_heals_by_itself_and_loses_nothing_acknowledged(pg: str) -> None:
    redis = RedisServer(free_port())
    await redis.start()
    try:
        async with cluster(pg, redis.url, "synchub:") as nodes:
            clients = await start_clients(nodes)
            product_ids = await seed(nodes)
            await burst(nodes, product_ids, 60)
            await redis.kill()  # everything in Redis is gone: streams, epochs, dedupe state
            await asyncio.sleep(0.3)
            await redis.start()
            await burst(nodes, product_ids, 60)  # acknowledged by the nodes while Redis recovers
            expected = await final_versions(nodes, product_ids)
            await settle(clients, expected, timeout=45)
    finally:
        await redis.kill()
    for client in clients:
        # Every acknowledged change is reflected: through events, or through the snapshot of a resync.
        assert client.versions == expected
        assert client.resyncs >= 1, client.transport
