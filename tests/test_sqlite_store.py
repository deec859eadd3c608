"""The embedded store's own concern: a write lock held by another connection (another process).

This process's writers are serialised by the store's asyncio lock, so ``BEGIN IMMEDIATE`` is tried on
the event loop without waiting; only another connection can make it wait, and then it must wait on
the store's thread, never on the loop (storage/sqlite.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.sql import SqlStore
from storage.sqlite import SqliteStore
from tests.conftest import seed


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[SqlStore]:
    store = SqliteStore(str(tmp_path / "hub.sqlite3"))
    await store.open()
    await store.migrate()
    yield store
    await store.close()


async def test_a_write_waits_for_another_connections_lock_on_the_thread_not_the_loop(
    embedded: SqlStore, tmp_path: Path
) -> None:
    product_id = await seed(embedded, stock={"par-1": 1})
    other = sqlite3.connect(tmp_path / "hub.sqlite3", isolation_level=None)
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
    embedded: SqlStore, tmp_path: Path
) -> None:
    product_id = await seed(embedded, stock={"par-1": 4})
    other = sqlite3.connect(tmp_path / "hub.sqlite3", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        # WAL: readers never wait for the writer.
        (level,) = await asyncio.wait_for(embedded.get_inventory(product_id), 1.0)
        assert level.on_hand == 4
    finally:
        other.execute("ROLLBACK")
        other.close()
