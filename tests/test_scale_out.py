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
from pathlib import Path

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
async def two_nodes(pg: str, logs: Path, *broker_args: str) -> AsyncIterator[list[Node]]:
    """Two hubs on the broker. Their logs (INFO and up) are printed when they stop: pytest shows a failed
    test's output, so a failure in CI says what the hubs saw."""
    nodes: list[Node] = []
    try:
        for name in ("node-a", "node-b"):
            log_file = str(logs / f"{name}.log")
            extra = (*broker_args, "--log-level", "INFO")
            nodes.append(await start_node(name, pg, extra=extra, log_file=log_file))
        yield nodes
    finally:
        for node in nodes:
            await node.stop()
        for node in nodes:
            print(f"==== {node.name} log\n{(logs / f'{node.name}.log').read_text(errors='replace')}")


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
    pg: str, redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    prefix = f"synchub_test_{secrets.token_hex(4)}:"
    async with two_nodes(pg, tmp_path, "--redis-url", redis_cluster.url, "--redis-prefix", prefix) as nodes:
        clients = await start_clients(nodes)
        product_ids = await seed(nodes)
        await burst(nodes, product_ids, 90)
        expected = await final_versions(nodes, product_ids)
        await settle(clients, expected)
    assert await cluster_keys(redis_cluster.url, prefix)  # the hubs' broker really was the cluster
    for client in clients:
        assert_every_change_once_in_order_or_resynced(client, expected)
        assert client.resyncs == 0


async def test_clients_of_hubs_on_a_redis_cluster_whose_master_failed_get_every_change_once_or_resync(
    pg: str, redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    """The stream's master is killed after acknowledging changes its (frozen, cut-off) replica never got;
    the replica is promoted and the burst goes on. Clients end with every change: each once and in order,
    or told to resync (the broker forked the stream's epoch) and caught up from the snapshot."""
    prefix = f"synchub_test_{secrets.token_hex(4)}:"
    slot = key_slot(stream_keys(prefix, "inventory.eu").meta.encode())
    try:
        async with two_nodes(
            pg, tmp_path, "--redis-url", redis_cluster.url, "--redis-prefix", prefix
        ) as nodes:
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


async def test_a_burst_through_two_nodes_on_nats_jetstream_reaches_every_client_once(
    pg: str, tmp_path: Path
) -> None:
    prefix = f"synchub_test_{secrets.token_hex(4)}"
    try:
        async with two_nodes(pg, tmp_path, "--nats-url", nats_url(), "--redis-prefix", prefix) as nodes:
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
