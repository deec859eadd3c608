"""The Redis broker's key layout (sync/redis_keys.py): one hash slot per stream, and the move of live
keys from the layout before hash tags, on the real Redis in SYNCHUB_TEST_REDIS_URL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.cluster import key_slot

from hub.cli import main
from sync.broker import Position
from sync.broker_redis import RedisBroker
from sync.redis_keys import LegacyLayout, layout_key, legacy_keys, migrate, stream_keys
from tests.conftest import delete_redis_keys, fresh_redis_prefix, redis_url
from tests.test_first_run import assert_one_line, closed_port, synchub

pytestmark = pytest.mark.redis


def test_the_keys_of_one_stream_share_a_slot_and_streams_spread() -> None:
    for stream in ["inventory.eu", "carts.u1", "a{b}c", "}", "{", ""]:
        keys = stream_keys("synchub:", stream)
        assert len({key_slot(key.encode()) for key in keys}) == 1, keys
    assert stream_keys("synchub:", "inventory.eu").stream == "synchub:{inventory.eu}:stream"
    slots = {key_slot(stream_keys("synchub:", f"inventory.r{i}").meta.encode()) for i in range(20)}
    assert len(slots) > 15


def test_a_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="braces"):
        RedisBroker(redis_url(), prefix="synchub:{x}:")


@pytest.fixture
async def redis_and_prefix() -> AsyncIterator[tuple[Redis, str]]:
    prefix = fresh_redis_prefix()
    client = Redis.from_url(redis_url())
    try:
        yield client, prefix
    finally:
        await client.aclose()
        await delete_redis_keys(redis_url(), prefix)


async def _legacy_stream(client: Redis, prefix: str, stream: str, count: int) -> Position:
    """Keys as a hub before hash tags left them: ``count`` publications in epoch "old", dedupe "k" at
    version ``count``."""
    keys = legacy_keys(prefix, stream)
    last = b""
    for offset in range(1, count + 1):
        last = await client.xadd(keys.stream, {"o": offset, "e": "old", "d": f"v{offset}"})
    await client.hset(keys.meta, mapping={"epoch": "old", "offset": count, "id": last})
    await client.hset(keys.dedupe, "k", count)
    return Position("old", count)


async def test_a_broker_refuses_to_start_beside_keys_of_the_layout_before(
    redis_and_prefix: tuple[Redis, str],
) -> None:
    client, prefix = redis_and_prefix
    await _legacy_stream(client, prefix, "inventory.eu", 2)
    broker = RedisBroker(redis_url(), prefix=prefix)
    try:
        with pytest.raises(LegacyLayout, match="synchub migrate-redis") as refused:
            await broker.start()
        assert "inventory.eu" in str(refused.value)
    finally:
        await broker.stop()


async def test_migrated_streams_resume_where_they_were(redis_and_prefix: tuple[Redis, str]) -> None:
    client, prefix = redis_and_prefix
    eu = await _legacy_stream(client, prefix, "inventory.eu", 3)
    await _legacy_stream(client, prefix, "carts.u*[1]", 1)  # glob characters in a name

    planned = await migrate(client, prefix, dry_run=True)
    assert planned.migrated == ["carts.u*[1]", "inventory.eu"]
    assert await client.exists(legacy_keys(prefix, "inventory.eu").meta)  # a dry run renames nothing

    done = await migrate(client, prefix)
    assert (done.migrated, done.conflicts) == (["carts.u*[1]", "inventory.eu"], [])
    assert (await migrate(client, prefix)).migrated == []  # idempotent
    assert await client.get(layout_key(prefix)) == b"2"

    broker = RedisBroker(redis_url(), prefix=prefix)
    await broker.start()
    try:
        assert await broker.top("inventory.eu") == eu  # same epoch, same offset
        replay = await broker.history("inventory.eu", Position("old", 1))
        assert [p.data for p in replay] == [b"v2", b"v3"]
        assert await broker.publish("inventory.eu", b"again", dedupe=("k", 3)) is None  # versions kept
        assert await broker.publish("inventory.eu", b"v4", dedupe=("k", 4)) == Position("old", 4)
    finally:
        await broker.stop()


async def test_a_stream_already_on_the_new_layout_is_left_alone(redis_and_prefix: tuple[Redis, str]) -> None:
    client, prefix = redis_and_prefix
    await _legacy_stream(client, prefix, "s", 2)
    await client.hset(stream_keys(prefix, "s").meta, mapping={"epoch": "new", "offset": 0})
    done = await migrate(client, prefix)
    assert (done.migrated, done.conflicts) == ([], ["s"])
    assert await client.exists(legacy_keys(prefix, "s").meta)  # nothing lost
    assert await client.get(layout_key(prefix)) is None  # not marked: a broker still refuses to start


def test_synchub_migrate_redis_renames_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    prefix = fresh_redis_prefix()
    asyncio.run(_with_client(lambda client: _legacy_stream(client, prefix, "inventory.eu", 1)))
    try:
        argv = ["migrate-redis", "--redis-url", redis_url(), "--redis-prefix", prefix]
        assert main([*argv, "--dry-run"]) == 0
        assert "would rename the keys of 1 streams" in capsys.readouterr().out
        assert main(argv) == 0
        assert (
            "renamed the keys of 1 streams to the hash-tagged layout: inventory.eu" in capsys.readouterr().out
        )
        sync = SyncRedis.from_url(redis_url())
        try:
            assert sync.hget(stream_keys(prefix, "inventory.eu").meta, "epoch") == b"old"
        finally:
            sync.close()
    finally:
        asyncio.run(delete_redis_keys(redis_url(), prefix))


async def _with_client(use: object) -> None:
    client = Redis.from_url(redis_url())
    try:
        await use(client)  # type: ignore[operator]
    finally:
        await client.aclose()


def test_a_hub_beside_old_layout_keys_exits_with_one_line_that_names_the_command(tmp_path: Path) -> None:
    prefix = fresh_redis_prefix()
    asyncio.run(_with_client(lambda client: _legacy_stream(client, prefix, "inventory.eu", 1)))
    try:
        result = synchub(
            tmp_path,
            "serve",
            "--port",
            str(closed_port()),
            "--redis-url",
            redis_url(),
            "--redis-prefix",
            prefix,
            "--jwt-secret",
            "s" * 40,
        )
        assert_one_line(result, "inventory.eu", "synchub migrate-redis", f"--redis-prefix {prefix}")
    finally:
        asyncio.run(delete_redis_keys(redis_url(), prefix))
