"""The embedded store's own concerns (storage/sqlite.py): group commit, and another connection's lock.

Concurrent writes share one transaction and one COMMIT, each in its own savepoint: a write that fails
undoes only itself, a COMMIT that fails fails every write of its batch, and a write is answered only
once its batch committed. ``BEGIN IMMEDIATE`` is tried on the event loop without waiting; only another
connection (another process) can make it wait, and then it waits on the store's thread, never on the
loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence

import pytest

from storage.errors import Conflict, InsufficientStock, StoreUnavailable
from storage.models import OutboxEntry, ReservationLineRequest, StockLevel
from storage.sql import SqlStore
from storage.sqlite import SqliteDatabase
from tests.conftest import seed, stock_delta


def database(store: SqlStore) -> SqliteDatabase:
    assert isinstance(store.db, SqliteDatabase)
    return store.db


class Announcements:
    def __init__(self) -> None:
        self.entries: list[OutboxEntry] = []

    async def outbox_committed(self, entries: Sequence[OutboxEntry]) -> None:
        self.entries.extend(entries)

    def outbox_changed(self) -> None:
        raise AssertionError("the embedded store hands its entries over")


async def test_a_write_waits_for_another_connections_lock_on_the_thread_not_the_loop(
    embedded: SqlStore,
) -> None:
    product_id = await seed(embedded, stock={"par-1": 1})
    other = sqlite3.connect(database(embedded).path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(embedded.adjust_stock(product_id, "par-1", 1))
        started = time.monotonic()
        for _ in range(20):
            await asyncio.sleep(0.01)
        # The loop kept turning while the write waited (a wait on the loop would have held it for the
        # whole busy timeout, 10 s).
        assert time.monotonic() - started < 2.0
        assert not write.done()
        other.execute("COMMIT")
        level = await asyncio.wait_for(write, 5.0)
        assert (level.on_hand, level.version) == (2, 2)
    finally:
        other.close()
    # The lock free again, the next write begins on the loop.
    assert (await embedded.adjust_stock(product_id, "par-1", 1)).on_hand == 3


async def test_a_read_is_not_held_up_by_another_connections_write_lock(
    embedded: SqlStore,
) -> None:
    product_id = await seed(embedded, stock={"par-1": 4})
    other = sqlite3.connect(database(embedded).path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        # WAL: readers never wait for the writer.
        (level,) = await asyncio.wait_for(embedded.get_inventory(product_id), 1.0)
        assert level.on_hand == 4
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_concurrent_writes_share_commits_and_each_keeps_its_own_outcome(embedded: SqlStore) -> None:
    product_id = await seed(embedded, stock={"par-1": 10})
    before = {entry.seq for entry in await embedded.read_outbox(limit=10_000)}
    told = Announcements()
    embedded.watch_outbox(told)
    commits = database(embedded).commits
    # Thirty that succeed and ten that cannot, interleaved, all waiting at once.
    outcomes = await asyncio.gather(
        *(embedded.adjust_stock(product_id, "par-1", 1 if n % 4 else -1_000) for n in range(40)),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, InsufficientStock)]
    levels = [o for o in outcomes if isinstance(o, StockLevel)]
    assert (len(refused), len(levels)) == (10, 30)
    # Each success saw the ones before it, as serial transactions would have.
    assert sorted(level.version for level in levels) == list(range(2, 32))
    assert sorted(level.on_hand for level in levels) == list(range(11, 41))
    (level,) = await embedded.get_inventory(product_id)
    assert (level.on_hand, level.version) == (40, 31)
    assert database(embedded).commits - commits < 40  # shared: fewer COMMITs (fsyncs) than writes
    appended = [entry for entry in await embedded.read_outbox(limit=10_000) if entry.seq not in before]
    assert [stock_delta(entry).version for entry in appended] == list(range(2, 32))
    assert told.entries == appended  # announced in commit order, the refused ones never


async def test_a_commit_that_fails_fails_every_write_of_its_batch_and_changes_nothing(
    embedded: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    product_id = await seed(embedded, stock={"par-1": 10})
    db = database(embedded)
    outbox = await embedded.read_outbox(limit=10_000)
    execute = db._execute

    def commit_fails_once(sql: str, args: tuple[object, ...]) -> int:
        if sql == "COMMIT":
            monkeypatch.setattr(db, "_execute", execute)
            raise sqlite3.OperationalError("disk I/O error")
        return execute(sql, args)

    monkeypatch.setattr(db, "_execute", commit_fails_once)
    outcomes = await asyncio.gather(
        *(embedded.adjust_stock(product_id, "par-1", 1) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    (level,) = await embedded.get_inventory(product_id)
    assert (level.on_hand, level.version) == (10, 1)
    assert await embedded.read_outbox(limit=10_000) == outbox
    assert (await embedded.adjust_stock(product_id, "par-1", 1)).on_hand == 11


async def test_a_write_whose_caller_gave_up_before_its_batch_ran_is_not_made(embedded: SqlStore) -> None:
    product_id = await seed(embedded, stock={"par-1": 10})
    abandoned = asyncio.create_task(embedded.adjust_stock(product_id, "par-1", 5))
    kept = asyncio.create_task(embedded.adjust_stock(product_id, "par-1", 1))
    await asyncio.sleep(0)  # both are waiting for the batch, which has not run yet
    abandoned.cancel()
    assert (await kept).on_hand == 11
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    (level,) = await embedded.get_inventory(product_id)
    assert (level.on_hand, level.version) == (11, 2)


async def test_a_write_that_fails_after_changing_rows_undoes_only_itself(embedded: SqlStore) -> None:
    kept_id = await seed(embedded, "KEPT", {"par-1": 10})
    held_id = await seed(embedded, "HELD", {"par-1": 10})
    reserved = await embedded.reserve("alice", "k1", "h1", [ReservationLineRequest(held_id, 1)], 600)
    assert reserved.status == 201
    # delete_product deletes first and then finds the pending reservation: only rolling back its own
    # savepoint keeps the product, while the writes batched around it commit.
    outcomes = await asyncio.gather(
        embedded.adjust_stock(kept_id, "par-1", 1),
        embedded.delete_product(held_id),
        embedded.adjust_stock(kept_id, "par-1", 1),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], Conflict)
    assert [o.on_hand for o in outcomes if isinstance(o, StockLevel)] == [11, 12]
    assert await embedded.get_product(held_id) is not None
    (held,) = await embedded.get_inventory(held_id)
    assert (held.on_hand, held.reserved) == (10, 1)


async def test_a_write_that_arrives_while_a_batch_commits_waits_to_share_the_next_commit(
    embedded: SqlStore,
) -> None:
    product_id = await seed(embedded, stock={"par-1": 10})
    db = database(embedded)
    db._commit_spacing = 1.0  # far longer than the few loop turns below take
    first = asyncio.create_task(embedded.adjust_stock(product_id, "par-1", 1))
    await asyncio.sleep(0)  # its batch has begun
    during = asyncio.create_task(embedded.adjust_stock(product_id, "par-1", 1))
    assert (await first).on_hand == 11
    commits = db.commits
    for _ in range(5):
        await asyncio.sleep(0)
    assert not during.done()  # held back: writes kept coming, the next batch waits for company
    later = asyncio.create_task(embedded.adjust_stock(product_id, "par-1", 1))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not during.done() and not later.done() and db.commits == commits
    assert sorted([(await during).on_hand, (await later).on_hand]) == [12, 13]
    assert db.commits == commits + 1  # both in one COMMIT


async def test_a_lone_writer_is_not_held_back_by_the_commit_spacing(embedded: SqlStore) -> None:
    product_id = await seed(embedded, stock={"par-1": 10})
    db = database(embedded)
    db._commit_spacing = 30.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(5):  # one after another: nothing else was waiting when each arrived
        assert (await embedded.adjust_stock(product_id, "par-1", 1)).on_hand == 11 + n
    assert loop.time() - started < 30.0


async def test_the_commit_spacing_flag_reaches_the_served_store(monkeypatch, tmp_path) -> None:
    from hub import cli, cli_settings
    from hub.keys import STORE
    from tests.conftest import hub_settings, running_hub

    def parsed(*flags: str) -> float:
        args = cli.build_parser().parse_args(["serve", "--jwt-secret", "s" * 40, *flags])
        return cli_settings.settings_from(args).sqlite_commit_spacing_ms

    assert parsed() == 10.0
    assert parsed("--sqlite-commit-spacing-ms", "2.5") == 2.5
    monkeypatch.setenv("SYNCHUB_SQLITE_COMMIT_SPACING_MS", "0")
    assert parsed() == 0.0
    for bad in ("-1", "100.5", "soon"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["serve", "--sqlite-commit-spacing-ms", bad])
    settings = hub_settings(str(tmp_path / "spaced.sqlite3"), sqlite_commit_spacing_ms=2.5)
    async with running_hub(settings) as hub:
        database = hub.app[STORE].db
        assert isinstance(database, SqliteDatabase) and database._commit_spacing == 0.0025
