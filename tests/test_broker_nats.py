"""What the NATS JetStream broker does beyond the contract suite (tests/test_broker_contract.py), on the
real nats-server in SYNCHUB_TEST_NATS_URL (127.0.0.1:4222; scripts/test makes sure it runs)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import nats
import orjson
import pytest

from storage.sql import SqlStore
from sync.broker import BrokerError, BrokerUnavailable, Position, PositionExpired
from sync.broker_nats import VERSION_HEADER, NatsBroker
from sync.channels import inventory_stream
from sync.relay import OutboxRelay
from tests.cluster_helpers import free_port
from tests.conftest import seed
from tests.test_broker_contract import Inbox, nats_broker, nats_url
from tests.test_first_run import assert_one_line, synchub


async def test_relays_racing_with_one_version_append_it_once() -> None:
    async with nats_broker() as first:
        second = NatsBroker(f"{nats_url()}?storage=memory", prefix=first.prefix)
        await second.start()
        try:
            for version in range(1, 6):
                results = await asyncio.gather(
                    *[
                        b.publish("s", f"v{version}".encode(), dedupe=("p1/w1", version))
                        for b in [first, second] * 4
                    ]
                )
                assert len([r for r in results if r is not None]) == 1, results
            top = await first.top("s")
            assert top.offset == 5
            replay = await first.history("s", Position(top.epoch, 0))
            assert [p.data for p in replay] == [b"v1", b"v2", b"v3", b"v4", b"v5"]
        finally:
            await second.stop()


async def test_the_version_rides_on_the_keys_own_subject() -> None:
    async with nats_broker() as broker:
        position = await broker.publish("inventory.eu", b"x", dedupe=("p1/w1", 7))
        assert position is not None
        names = broker.names("inventory.eu")
        nc = await nats.connect(nats_url())
        try:
            last = await nc.jetstream().get_last_msg(names.stream, names.keyed("p1/w1"))
        finally:
            await nc.close()
        assert (last.seq, (last.headers or {})[VERSION_HEADER], last.data) == (position.offset, "7", b"x")
        assert broker.names("a.b").stream != broker.names("a_b").stream  # one stream per name


async def test_a_recreated_stream_is_a_new_epoch_and_subscribers_reread_it() -> None:
    async with nats_broker(check_interval=0.2) as broker:
        inbox = Inbox()
        broker.subscribe("s", inbox)
        before = await broker.publish("s", b"old", dedupe=("k", 3))
        await inbox.wait_for(1)
        assert before is not None
        nc = await nats.connect(nats_url())
        try:
            await nc.jetstream().delete_stream(broker.names("s").stream)  # an operator, a lost disk
        finally:
            await nc.close()
        after = await broker.publish("s", b"new", dedupe=("k", 3))  # the versions went with the stream
        assert after is not None and after.epoch != before.epoch and after.offset == 1
        with pytest.raises(PositionExpired):
            await broker.history("s", before)
        await inbox.wait_for(2, seconds=10)
        assert [(p.data, p.position) for p in inbox.received] == [(b"old", before), (b"new", after)]


async def test_a_publication_on_one_node_reaches_subscribers_on_another() -> None:
    async with nats_broker() as a:
        b = NatsBroker(f"{nats_url()}?storage=memory", prefix=a.prefix)
        await b.start()
        try:
            inbox = Inbox()
            b.subscribe("inventory.eu", inbox)
            position = await a.publish("inventory.eu", b"from a")
            await inbox.wait_for(1)
            assert inbox.received[0].position == position
        finally:
            await b.stop()


async def test_an_unreachable_server_is_unavailable_at_start() -> None:
    broker = NatsBroker(f"nats://127.0.0.1:{free_port()}", timeout=0.5)
    with pytest.raises(BrokerUnavailable):
        await broker.start()
    await broker.stop()


def test_a_prefix_must_be_a_subject_and_stream_token() -> None:
    with pytest.raises(ValueError, match="prefix"):
        NatsBroker(prefix="synchub.eu")


def test_a_hub_that_cannot_reach_nats_exits_with_one_line(tmp_path: Path) -> None:
    port = str(free_port())
    result = synchub(
        tmp_path,
        "serve",
        "--port",
        port,
        "--nats-url",
        f"nats://127.0.0.1:{free_port()}",
        "--jwt-secret",
        "s" * 40,
    )
    assert_one_line(result, "cannot reach NATS JetStream at nats://127.0.0.1:", "nats-server")


NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"  # Debian's; scripts/_lib.sh ensure_nats


class PrivateNats:
    """A nats-server of this test's own (JetStream, file storage in ``store``), to kill and restart."""

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.store = store
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            NATS_SERVER,
            *("-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(30):
            while True:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    return
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def test_a_killed_and_restarted_server_loses_nothing_and_keeps_the_epoch(tmp_path: Path) -> None:
    server = PrivateNats(tmp_path / "jetstream")
    await server.start()
    publisher = NatsBroker(server.url, prefix="restart", check_interval=0.2)
    subscriber = NatsBroker(server.url, prefix="restart", check_interval=0.2)
    try:
        await publisher.start()
        await subscriber.start()
        inbox = Inbox()
        subscriber.subscribe("s", inbox)
        for version in range(1, 6):
            await publisher.publish("s", str(version).encode(), dedupe=("k", version))
        await inbox.wait_for(5)
        await server.kill()  # kill -9: what JetStream had written to its file store stays
        await server.start()
        for version in range(6, 11):
            async with asyncio.timeout(30):
                while True:
                    try:
                        await publisher.publish("s", str(version).encode(), dedupe=("k", version))
                        break
                    except BrokerError:
                        await asyncio.sleep(0.1)
        await inbox.wait_for(10, seconds=30)
        await inbox.settle()
        assert inbox.data == [str(v).encode() for v in range(1, 11)]
        assert len({p.position.epoch for p in inbox.received}) == 1
        assert [p.position.offset for p in inbox.received] == list(range(1, 11))
    finally:
        await subscriber.stop()
        await publisher.stop()
        await server.kill()


async def test_relays_on_three_nodes_racing_over_one_outbox_append_each_change_once_in_order(
    store: SqlStore,
) -> None:
    """tests/test_relay.py's race, on NATS: every node relays the same outbox, and the per-key
    compare-and-set keeps each (product/warehouse, version) appended once."""
    product_ids = [await seed(store, f"RACE-{i}", {"par-1": 1}) for i in range(3)]
    async with nats_broker() as first:
        brokers: list[NatsBroker] = [first]
        for _ in range(2):
            brokers.append(NatsBroker(f"{nats_url()}?storage=memory", prefix=first.prefix))
            await brokers[-1].start()
        try:

            async def writer() -> None:
                for n in range(60):
                    await store.adjust_stock(product_ids[n % 3], "par-1", 1)

            async def relay_until(done: asyncio.Event, broker: NatsBroker) -> None:
                relay = OutboxRelay(store, broker, batch_size=7)
                while not done.is_set() or (await store.outbox_backlog())[0]:
                    await relay.relay_once()
                    await asyncio.sleep(0)

            done = asyncio.Event()
            relays = [asyncio.create_task(relay_until(done, broker)) for broker in brokers]
            await writer()
            done.set()
            await asyncio.wait_for(asyncio.gather(*relays), 60)
            stream = inventory_stream("eu")
            history = await first.history(stream, Position((await first.top(stream)).epoch, 0))
            versions: dict[str, list[int]] = {}
            for publication in history:
                event = orjson.loads(publication.data)
                versions.setdefault(event["product_id"], []).append(event["version"])
            assert versions == {pid: list(range(1, 22)) for pid in product_ids}
        finally:
            for broker in brokers[1:]:
                await broker.stop()
