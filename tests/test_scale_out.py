"""Past one Redis: two `synchub serve` processes whose broker is a Redis Cluster (3 masters, 3 replicas,
started by the ``redis_cluster`` fixture) or NATS JetStream (127.0.0.1:4222), with clients on every
transport spread over both nodes.

Every committed change must reach every client once and in order — or, where the broker lost an
acknowledged publication in a failover, the client must be told to resync (its snapshot then holds the
change): never a silent gap, never a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import nats
import pytest
from redis.cluster import key_slot

from bench.redis_cluster import LocalCluster
from sync.redis_connect import open_client
from sync.redis_keys import stream_keys
from tests.cluster_helpers import Client, Node, start_node, versions_by_key
from tests.test_broker_contract import delete_nats_streams, nats_url
from tests.test_cluster import burst, final_versions, seed, settle, start_clients

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def two_nodes(pg: str, *broker_args: str) -> AsyncIterator[list[Node]]:
    nodes: list[Node] = []
    try:
        for name in ("node-a", "node-b"):
            nodes.append(await start_node(name, pg, extra=broker_args))
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


def assert_every_change_once_in_order_or_resynced(
    client: Client, expected: dict[tuple[str, str], int]
) -> None:
    """Without a resync: every version of every key, once, in order. After one: the client's state
    (snapshot + events since, each key at the highest version it was given) is the latest, and no event
    names a version that was never made. Past the resync a version may come again, or after a higher one:
    a change whose publication the failover lost along with its dedupe record is republished by a relay
    that never got its acknowledgement — possibly after its successor, published by the other node's
    relay, went through. docs/protocol.md has clients apply a version only above the one they have, so
    such a redelivery changes nothing; the state each client ends in is what is checked."""
    received = versions_by_key(client.events)
    if client.resyncs == 0:
        assert received == {key: list(range(1, last + 1)) for key, last in expected.items()}, client.transport
    else:
        for key, versions in received.items():
            assert set(versions) <= set(range(1, expected[key] + 1)), (client.transport, key, versions)
    assert client.versions == expected, client.transport


async def test_a_burst_through_two_nodes_on_a_redis_cluster_reaches_every_client_once(
    pg: str, redis_cluster: LocalCluster
) -> None:
    prefix = f"synchub_test_{secrets.token_hex(4)}:"
    async with two_nodes(pg, "--redis-url", redis_cluster.url, "--redis-prefix", prefix) as nodes:
        clients = await start_clients(nodes)
        product_ids = await seed(nodes)
        await burst(nodes, product_ids, 90)
        expected = await final_versions(nodes, product_ids)
        await settle(clients, expected)
    assert await cluster_keys(redis_cluster.url, prefix)  # the hubs' broker really was the cluster
    for client in clients:
        assert_every_change_once_in_order_or_resynced(client, expected)
        assert client.resyncs == 0


@pytest.mark.xfail(
    strict=False,
    reason="known bug, issue 18 left open: in 2 of the last 3 CI runs (not in 10 local runs) one node's"
    " clients stopped at the changes before the failover, with no resync and no reconnect — that node's"
    " stream reader delivered nothing after the replica's promotion. Not yet found.",
)
async def test_clients_of_hubs_on_a_redis_cluster_whose_master_failed_get_every_change_once_or_resync(
    pg: str, redis_cluster: LocalCluster
) -> None:
    """The stream's master is killed after acknowledging changes its (frozen, cut-off) replica never got;
    the replica is promoted and the burst goes on. Clients end with every change: each once and in order,
    or told to resync (the broker forked the stream's epoch) and caught up from the snapshot."""
    prefix = f"synchub_test_{secrets.token_hex(4)}:"
    slot = key_slot(stream_keys(prefix, "inventory.eu").meta.encode())
    try:
        async with two_nodes(pg, "--redis-url", redis_cluster.url, "--redis-prefix", prefix) as nodes:
            clients = await start_clients(nodes)
            product_ids = await seed(nodes)
            await burst(nodes, product_ids, 30)
            master = redis_cluster.master_of_slot(slot)
            replica = redis_cluster.replica_of(master)
            redis_cluster.pause(replica)
            redis_cluster.cli(master, "client", "kill", "type", "replica")
            await burst(nodes, product_ids, 15)  # acknowledged by the master alone
            await asyncio.to_thread(redis_cluster.kill_node, master)
            redis_cluster.resume(replica)
            await burst(nodes, product_ids, 30)  # through the failover: the relays retry
            expected = await final_versions(nodes, product_ids)
            await settle(clients, expected, timeout=60)
        assert replica in redis_cluster.masters()
        for client in clients:
            assert_every_change_once_in_order_or_resynced(client, expected)
            assert client.resyncs >= 1, client.transport  # the lost history was not passed off as theirs
    finally:
        await asyncio.to_thread(redis_cluster.mend)


async def cluster_keys(url: str, prefix: str) -> list[bytes]:
    client = open_client(url)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    finally:
        await client.aclose()


async def nats_stream_names(prefix: str) -> list[str]:
    nc = await nats.connect(nats_url())
    try:
        infos = await nc.jetstream().streams_info()
    finally:
        await nc.close()
    return [i.config.name for i in infos if i.config.name and i.config.name.startswith(f"{prefix}_")]


async def test_a_burst_through_two_nodes_on_nats_jetstream_reaches_every_client_once(pg: str) -> None:
    prefix = f"synchub_test_{secrets.token_hex(4)}"
    try:
        async with two_nodes(pg, "--nats-url", nats_url(), "--redis-prefix", prefix) as nodes:
            clients = await start_clients(nodes)
            product_ids = await seed(nodes)
            await burst(nodes, product_ids, 90)
            expected = await final_versions(nodes, product_ids)
            await settle(clients, expected)
        assert await nats_stream_names(prefix)  # the hubs' broker really was NATS
    finally:
        await delete_nats_streams(prefix)
    for client in clients:
        assert_every_change_once_in_order_or_resynced(client, expected)
        assert client.resyncs == 0
