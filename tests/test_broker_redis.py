"""What only the Redis broker does: lose its stream and start a new epoch, trim by age, survive a Redis
restart, share streams between nodes, fail promptly when Redis is away.

Real servers over TCP: the shared one (SYNCHUB_TEST_REDIS_URL, keys under a prefix of each test's own)
and, for restarts and outages, a private ``redis-server`` on a free port that the test kills with SIGKILL.
The contract every broker meets is in tests/test_broker_contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import (
    ClusterDownError,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from sync import broker_redis
from sync.broker import BrokerError, Position, PositionExpired, Publication, PublishIncomplete
from sync.broker_redis import BrokerUnavailable, RedisBroker
from sync.redis_connect import Client
from tests.conftest import delete_redis_keys, fresh_redis_prefix, redis_url
from tests.test_broker_contract import Inbox, redis_broker

pytestmark = pytest.mark.redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own, keeping nothing on disk: killed, it comes back empty."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is required"
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)),
            *("--save", "", "--appendonly", "no", "--daemonize", "no"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url)
        try:
            for _ in range(250):
                with contextlib.suppress(OSError, RedisConnectionError):
                    if await client.ping():
                        return
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()
        raise AssertionError("the private redis-server did not start")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()  # SIGKILL: no shutdown, no save
            await self.proc.wait()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    try:
        yield server
    finally:
        await server.kill()


@contextlib.asynccontextmanager
async def raw_client(url: str | None = None) -> AsyncIterator[Redis]:
    client = Redis.from_url(url or redis_url())
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    started = time.monotonic()
    yield
    assert time.monotonic() - started < seconds


async def received(inbox: Inbox, data: bytes, seconds: float = 10.0) -> Publication:
    async with asyncio.timeout(seconds):
        while True:
            for publication in inbox.received:
                if publication.data == data:
                    return publication
            await inbox.wait_for(len(inbox.received) + 1, seconds)


async def test_a_lost_stream_starts_a_new_epoch_and_old_positions_expire() -> None:
    async with redis_broker() as broker:
        inbox = Inbox()
        broker.subscribe("s", inbox)
        positions = [await broker.publish("s", str(i).encode()) for i in range(3)]
        await inbox.wait_for(3)
        before = positions[-1]
        assert before is not None

        await delete_redis_keys(redis_url(), broker.prefix)  # a flush, an eviction, a restart without disk

        top = await broker.top("s")
        assert top.epoch != before.epoch
        assert top.offset == 0
        with pytest.raises(PositionExpired) as caught:
            await broker.history("s", before)
        assert caught.value.current == top
        after = await broker.publish("s", b"after")
        assert after == Position(top.epoch, 1)
        live = await received(inbox, b"after")
        assert live.position == after  # the subscriber sees the epoch change, and treats it as a gap


async def test_a_subscriber_notices_a_recreated_stream_whose_ids_went_back() -> None:
    # After a failover to a server with a slower clock, or a recreation within the same millisecond,
    # the new entries' ids are not after the reader's cursor; the epoch gives it away.
    async with redis_broker(block_ms=100) as broker, raw_client() as redis:
        inbox = Inbox()
        broker.subscribe("s", inbox)
        await broker.publish("s", b"old")
        await inbox.wait_for(1)
        stream, meta, dedupe = broker.keys("s")
        await redis.delete(stream, meta, dedupe)
        await redis.xadd(stream, {"o": 1, "e": "recreated", "d": b"new"}, id="1-1")
        await redis.hset(meta, mapping={"epoch": "recreated", "offset": 1, "id": "1-1"})
        publication = await received(inbox, b"new", seconds=5)
        assert publication.position == Position("recreated", 1)
        await broker.publish("s", b"newer")
        await received(inbox, b"newer", seconds=5)
        assert inbox.data == [b"old", b"new", b"newer"]


async def _roll_back(redis: Redis, broker: RedisBroker, offset: int) -> None:
    """The stream as a Redis restored from an older snapshot (or a replica promoted without the last
    writes) has it: the entries after ``offset`` gone, its meta back there, the epoch unchanged."""
    stream, meta, _ = broker.keys("s")
    entries = await redis.xrange(stream)
    await redis.xdel(stream, *[entry_id for entry_id, _ in entries[offset:]])
    await redis.hset(meta, mapping={"offset": offset, "id": entries[offset - 1][0]})


async def test_a_reader_that_sees_an_offset_given_twice_moves_its_subscribers_to_a_new_epoch() -> None:
    async with redis_broker(block_ms=100) as broker, raw_client() as redis:
        inbox = Inbox()
        broker.subscribe("s", inbox)
        positions = [await broker.publish("s", str(i).encode()) for i in range(1, 6)]
        await inbox.wait_for(5)
        await _roll_back(redis, broker, 3)
        other = RedisBroker(redis_url(), prefix=broker.prefix)  # a node that never saw 4 and 5
        await other.start()
        try:
            again = await other.publish("s", b"another 4")
        finally:
            await other.stop()
        assert positions[0] is not None and again == Position(positions[0].epoch, 4)  # it cannot tell
        publication = await received(inbox, b"another 4")
        assert publication.position.epoch != positions[0].epoch  # the reader could: offset 4 twice
        assert publication.position.offset == 4
        assert await broker.top("s") == publication.position
        last = positions[-1]
        assert last is not None
        with pytest.raises(PositionExpired):
            await broker.history("s", last)  # a position of the lost history


async def test_an_entry_whose_fork_failed_is_forked_and_delivered_on_the_next_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fork a diverged entry needs is a Redis call of its own: if it fails (Redis went away just
    then), the reader must read that entry again rather than step past it."""
    forks: list[str] = []
    fork = broker_redis._fork

    async def failing_once(client: Client, meta: str, epoch: str) -> str:
        forks.append(epoch)
        if len(forks) == 1:
            raise RedisConnectionError("lost just then")
        return await fork(client, meta, epoch)

    monkeypatch.setattr(broker_redis, "_fork", failing_once)
    async with redis_broker(block_ms=100) as broker, raw_client() as redis:
        inbox = Inbox()
        broker.subscribe("s", inbox)
        for i in range(1, 6):
            await broker.publish("s", str(i).encode())
        await inbox.wait_for(5)
        await _roll_back(redis, broker, 3)
        other = RedisBroker(redis_url(), prefix=broker.prefix)  # a node that never saw 4 and 5
        await other.start()
        try:
            await other.publish("s", b"another 4")
        finally:
            await other.stop()
        publication = await received(inbox, b"another 4")
        assert len(forks) == 2  # failed, then again on the next read
        assert publication.position.epoch != inbox.received[0].position.epoch
        assert publication.position.offset == 4


@pytest.mark.parametrize(
    "error",
    [
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        TryAgainError("TRYAGAIN"),
        SlotNotCoveredError("slot 1 is not covered"),
        RedisClusterUnreachableError("Redis Cluster cannot be connected"),
    ],
)
def test_a_cluster_down_or_failing_over_is_redis_unavailable(error: Exception) -> None:
    # A failover's errors may be retried (the relay does); RedisClusterException is not a RedisError.
    with pytest.raises(BrokerUnavailable), broker_redis._translated_errors("publish"):
        raise error


async def test_a_publisher_given_a_position_twice_forks_the_epoch() -> None:
    async with redis_broker() as broker, raw_client() as redis:
        positions = [await broker.publish("s", str(i).encode()) for i in range(1, 6)]
        await _roll_back(redis, broker, 3)
        again = await broker.publish("s", b"another 4")
        assert positions[0] is not None and again is not None
        assert again.offset == 4 and again.epoch != positions[0].epoch
        assert (await broker.top("s")).epoch == again.epoch
        following = await broker.publish("s", b"5")
        assert following == Position(again.epoch, 5)


async def test_old_entries_are_trimmed_by_age() -> None:
    # MINID ~ trims whole stream nodes only (100 entries each by default): publish a few nodes' worth,
    # let them age, and publish again.
    async with redis_broker(max_age_seconds=0.05, max_len=10_000) as broker, raw_client() as redis:
        first = await broker.publish("s", b"0")
        assert first is not None
        for i in range(1, 300):
            await broker.publish("s", str(i).encode())
        await asyncio.sleep(0.2)
        last = await broker.publish("s", b"late")
        assert last is not None
        with pytest.raises(PositionExpired):
            await broker.history("s", first)
        assert await redis.xlen(broker.keys("s").stream) < 301
        previous = Position(last.epoch, last.offset - 1)
        assert [p.data for p in await broker.history("s", previous)] == [b"late"]


async def test_a_publication_on_one_node_reaches_subscribers_on_another() -> None:
    async with redis_broker() as a:
        b = RedisBroker(redis_url(), prefix=a.prefix)
        await b.start()
        try:
            on_a, on_b = Inbox(), Inbox()
            a.subscribe("inventory.eu", on_a)
            b.subscribe("inventory.eu", on_b)
            position = await a.publish("inventory.eu", b"from a")
            assert (await received(on_b, b"from a")).position == position
            assert (await received(on_a, b"from a")).position == position
            assert await b.top("inventory.eu") == position
            assert await b.publish("inventory.eu", b"dup", dedupe=("k", 1)) is not None
            assert await a.publish("inventory.eu", b"dup", dedupe=("k", 1)) is None  # dedupe is shared
        finally:
            await b.stop()


async def test_a_burst_of_calls_waits_for_a_connection_rather_than_failing() -> None:
    async with redis_broker() as broker:
        await broker.publish("s", b"x")
        tops = await asyncio.gather(*(broker.top("s") for _ in range(300)))
        assert len(set(tops)) == 1


async def test_a_failing_subscriber_is_logged_and_the_others_still_receive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def failing(publication: Publication) -> None:
        raise RuntimeError("subscriber bug")

    async with redis_broker() as broker:
        inbox = Inbox()
        broker.subscribe("s", failing)
        broker.subscribe("s", inbox)
        await broker.publish("s", b"1")
        await broker.publish("s", b"2")
        await inbox.wait_for(2)
        assert inbox.data == [b"1", b"2"]
    assert any("subscriber bug" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


async def test_a_short_socket_timeout_in_the_url_does_not_cut_blocking_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    prefix = fresh_redis_prefix()
    broker = RedisBroker(f"{redis_url()}?socket_timeout=0.2", prefix=prefix, block_ms=600)
    await broker.start()
    try:
        with caplog.at_level(logging.WARNING, logger="sync.broker_redis"):
            inbox = Inbox()
            broker.subscribe("s", inbox)
            await asyncio.sleep(1.5)  # two blocking reads of 0.6 s, longer than the URL's timeout
            await broker.publish("s", b"x")
            await inbox.wait_for(1)
        assert [r for r in caplog.records if r.name == "sync.broker_redis"] == []
    finally:
        await broker.stop()
        await delete_redis_keys(redis_url(), prefix)


async def test_publishing_to_an_unreachable_redis_fails_promptly() -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        with within(2.0), pytest.raises(BrokerUnavailable):
            await broker.start()
        with within(2.0), pytest.raises(BrokerUnavailable):
            await broker.publish("s", b"x")
        with within(2.0), pytest.raises(BrokerUnavailable):
            await broker.history("s", Position("e", 0))
        with within(2.0), pytest.raises(PublishIncomplete) as failed:
            await broker.publish_many([("s", b"x", None), ("s", b"y", ("k", 1))])
        # Nothing is known to have been appended; the cause says why.
        assert failed.value.published == [] and isinstance(failed.value.cause, BrokerUnavailable)
    finally:
        await broker.stop()


async def test_a_redis_that_does_not_answer_times_out() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    broker = RedisBroker(f"redis://127.0.0.1:{port}/0?socket_timeout=0.3&socket_connect_timeout=0.3")
    try:
        with within(3.0), pytest.raises(BrokerUnavailable):
            await broker.publish("s", b"x")
    finally:
        await broker.stop()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_stopped_broker_refuses_work() -> None:
    async with redis_broker() as broker:
        pass
    with pytest.raises(BrokerError):
        await broker.publish("s", b"x")
    with pytest.raises(BrokerError):
        broker.subscribe("s", Inbox())


@pytest.mark.slow
async def test_the_reader_survives_a_redis_restart(private_redis: PrivateRedis) -> None:
    await private_redis.start()
    broker = RedisBroker(private_redis.url, block_ms=500)
    await broker.start()
    try:
        inbox = Inbox()
        broker.subscribe("s", inbox)
        before = await broker.publish("s", b"before")
        assert (await received(inbox, b"before")).position == before
        assert before is not None

        await private_redis.kill()
        with within(2.0), pytest.raises(BrokerUnavailable):
            await broker.publish("s", b"during")
        await asyncio.sleep(0.5)  # the reader notices, and backs off

        await private_redis.start()  # same port, nothing kept: no stream, no script
        after = await broker.publish("s", b"after")
        assert after is not None and after.epoch != before.epoch and after.offset == 1
        publication = await received(inbox, b"after")
        assert publication.position == after
        assert inbox.data == [b"before", b"after"]
        with pytest.raises(PositionExpired):
            await broker.history("s", before)
    finally:
        await broker.stop()


@pytest.mark.slow
async def test_a_subscription_made_while_redis_is_down_takes_effect_at_once(
    private_redis: PrivateRedis,
) -> None:
    broker = RedisBroker(private_redis.url, block_ms=500)
    try:
        inbox = Inbox()
        broker.subscribe("s", inbox)  # its reader cannot reach Redis yet
        await asyncio.sleep(1.0)
        await private_redis.start()
        # Published while the reader still backs off: it is after the subscription all the same.
        position = await broker.publish("s", b"early")
        assert (await received(inbox, b"early")).position == position
    finally:
        await broker.stop()
