"""The Redis broker on a Redis Cluster that fails under it: a master killed and its replica promoted
(with publications the replica never got), and a stream's slot moved to another master mid-burst.

What must hold: every publication a publisher was told appended reaches the subscriber once and in
order — and where a failover lost publications the subscriber had seen, their positions expire and the
subscriber is told by a new epoch (it resyncs) instead of being fed a second history under the same
offsets. Each test leaves the session's cluster healthy again (3 masters, 3 replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.cluster import key_slot

from bench.redis_cluster import LocalCluster
from sync.broker import BrokerError, Position, PositionExpired, PublishItem
from sync.broker_redis import RedisBroker
from sync.redis_connect import Client
from tests.test_broker_contract import Inbox

pytestmark = [pytest.mark.redis, pytest.mark.slow]
STREAM = "inventory.eu"


@contextlib.asynccontextmanager
async def two_brokers(cluster: LocalCluster) -> AsyncIterator[tuple[RedisBroker, RedisBroker]]:
    """A publishing node and a subscribing node, sharing a fresh prefix on the cluster."""
    prefix = f"synchub_test_{secrets.token_hex(4)}:"
    publisher = RedisBroker(cluster.url, prefix=prefix, block_ms=500)
    subscriber = RedisBroker(cluster.url, prefix=prefix, block_ms=500)
    await publisher.start()
    await subscriber.start()
    try:
        yield publisher, subscriber
    finally:
        await subscriber.stop()
        await publisher.stop()


async def relay(broker: RedisBroker, versions: range) -> list[Position]:
    """Publish each version as the outbox relay does: with its dedupe version, again until the broker
    says it was appended (or already was)."""
    appended: list[Position] = []
    for version in versions:
        async with asyncio.timeout(60):
            while True:
                try:
                    position = await broker.publish(STREAM, str(version).encode(), dedupe=("p1/w1", version))
                except BrokerError:
                    await asyncio.sleep(0.05)
                    continue
                if position is not None:
                    appended.append(position)
                break
    return appended


async def relay_batches(
    broker: RedisBroker, versions: range, size: int = 10, pause: float = 0.0
) -> list[Position]:
    """:func:`relay` in publish_many batches (one pipeline each), as a relay's sweep publishes; a batch
    that fails is published again whole (dedupe drops what it had appended)."""
    appended: list[Position] = []
    for start in range(versions.start, versions.stop, size):
        batch = range(start, min(start + size, versions.stop))
        items: list[PublishItem] = [(STREAM, str(v).encode(), ("p1/w1", v)) for v in batch]
        async with asyncio.timeout(60):
            while True:
                try:
                    positions = await broker.publish_many(items)
                except BrokerError:
                    await asyncio.sleep(0.05)
                    continue
                appended.extend(p for p in positions if p is not None)
                break
        await asyncio.sleep(pause)  # a relay's next sweep
    return appended


async def received(inbox: Inbox, data: bytes, seconds: float = 60) -> None:
    async with asyncio.timeout(seconds):
        while data not in inbox.data:
            await inbox.wait_for(len(inbox.received) + 1, seconds)


def slot_of(broker: RedisBroker) -> int:
    return key_slot(broker.keys(STREAM).meta.encode())


async def test_a_failover_that_lost_publications_moves_subscribers_to_a_new_epoch(
    redis_cluster: LocalCluster,
) -> None:
    try:
        async with two_brokers(redis_cluster) as (publisher, subscriber):
            inbox = Inbox()
            subscriber.subscribe(STREAM, inbox)
            await relay(publisher, range(1, 11))
            await received(inbox, b"10")
            master = redis_cluster.master_of_slot(slot_of(publisher))
            replica = redis_cluster.replica_of(master)

            # 11-15 reach the master (and the subscriber) while its replica is frozen and cut off (the
            # master drops the link, so nothing waits in the replica's socket), then the master dies:
            # the replica is promoted without them, and their offsets are used again.
            redis_cluster.pause(replica)
            redis_cluster.cli(master, "client", "kill", "type", "replica")
            lost = await relay(publisher, range(11, 16))
            await received(inbox, b"15")
            await asyncio.to_thread(redis_cluster.kill_node, master)
            redis_cluster.resume(replica)
            await asyncio.to_thread(
                redis_cluster.wait_until, "the replica promoted", lambda: replica in redis_cluster.masters()
            )
            after = await relay(publisher, range(16, 26))
            await received(inbox, b"25")
            await inbox.settle()

            assert inbox.data == [str(v).encode() for v in range(1, 26)]  # each once, in order
            epochs = [p.position.epoch for p in inbox.received]
            assert epochs[:15] == [lost[0].epoch] * 15
            assert len(set(epochs[15:])) == 1 and epochs[15] != lost[0].epoch  # the resync signal
            assert [p.position for p in inbox.received[15:]] == after
            with pytest.raises(PositionExpired):
                await subscriber.history(STREAM, lost[-1])  # a position of the lost history
            assert await subscriber.history(STREAM, after[0]) == inbox.received[16:]
    finally:
        await asyncio.to_thread(redis_cluster.mend)


@pytest.mark.parametrize("failure", ["killed", "frozen"])
async def test_a_reader_whose_client_relied_on_the_master_that_failed_reads_on_after_the_failover(
    redis_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """redis-py finds XREAD's key by asking the client's default node (COMMAND GETKEYS), before and
    outside the command's retries and topology refresh. The default node here is the master that fails
    (killed: refused connections; frozen by SIGSTOP: no answers): the reader's next XREAD fails on that
    lookup alone, and with the client it had it would fail so for ever, after the promotion too (the
    stall in 2 of 3 CI runs of test_scale_out's failover test). The reader must take a client that
    knows the new topology and deliver what is published after."""
    try:
        async with two_brokers(redis_cluster) as (publisher, subscriber):
            clients: list[Client] = []
            make_client = subscriber._reader_client

            def recorded(seeds: Sequence[tuple[str, int]] = ()) -> Client:
                clients.append(make_client(seeds))
                return clients[-1]

            monkeypatch.setattr(subscriber, "_reader_client", recorded)
            inbox = Inbox()
            subscriber.subscribe(STREAM, inbox)
            await relay(publisher, range(1, 3))
            await received(inbox, b"2")
            assert isinstance(clients[0], RedisCluster)
            doomed = int(clients[0].get_default_node().port)
            replica = redis_cluster.replica_of(doomed)
            if failure == "killed":
                await asyncio.to_thread(redis_cluster.kill_node, doomed)
            else:
                redis_cluster.pause(doomed)
            await asyncio.to_thread(
                redis_cluster.wait_until,
                "the replica promoted",
                lambda: redis_cluster.cli(replica, "role").startswith("master"),
            )
            await relay(publisher, range(3, 6))
            await received(inbox, b"5", seconds=30)
            assert inbox.data[-3:] == [b"3", b"4", b"5"]
    finally:
        await asyncio.to_thread(redis_cluster.mend)


async def test_a_slot_moved_during_a_burst_loses_and_repeats_nothing(redis_cluster: LocalCluster) -> None:
    try:
        async with two_brokers(redis_cluster) as (publisher, subscriber):
            inbox = Inbox()
            subscriber.subscribe(STREAM, inbox)
            await relay(publisher, range(1, 2))
            await received(inbox, b"1")
            slot = slot_of(publisher)
            source = redis_cluster.master_of_slot(slot)
            target = next(port for port in redis_cluster.masters() if port != source)

            burst = asyncio.create_task(relay_batches(publisher, range(2, 301), pause=0.05))
            await received(inbox, b"50")
            await asyncio.to_thread(move_slot, redis_cluster, slot, source, target)
            assert not burst.done()  # the slot moved while the burst went on
            appended = await burst
            await received(inbox, b"300")
            await inbox.settle()

            assert redis_cluster.master_of_slot(slot) == target
            assert inbox.data == [str(v).encode() for v in range(1, 301)]
            assert len({p.position.epoch for p in inbox.received}) == 1  # nothing was lost: no resync
            assert [p.position.offset for p in inbox.received] == list(range(1, 301))  # no gap, none twice
            assert set(appended) <= {p.position for p in inbox.received}
    finally:
        await asyncio.to_thread(redis_cluster.mend)


def move_slot(cluster: LocalCluster, slot: int, source: int, target: int) -> None:
    """Resharding as redis-cli --cluster reshard does it: IMPORTING on the target, MIGRATING on the
    source, MIGRATE the slot's keys in batches, then every master learns the slot's new owner."""
    ids = cluster.node_ids()
    cluster.cli(target, "cluster", "setslot", str(slot), "importing", ids[source])
    cluster.cli(source, "cluster", "setslot", str(slot), "migrating", ids[target])
    while keys := cluster.cli(source, "cluster", "getkeysinslot", str(slot), "100").split():
        cluster.cli(source, "migrate", "127.0.0.1", str(target), "", "0", "5000", "keys", *keys)
    for port in [target, source, *(p for p in cluster.masters() if p not in (source, target))]:
        cluster.cli(port, "cluster", "setslot", str(slot), "node", ids[target])
