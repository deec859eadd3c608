"""A node's first hourly purge runs when it starts, whatever the machine's uptime: the rating moves a
stopped node left (storage/rating_folds.py) are folded into the product's row at once, not an hour on."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiohttp import web

import hub.app
from hub.keys import METRICS, SETTINGS, STORE
from hub.metrics import Metrics
from storage.reviews import RatingAggregate
from storage.sql import SqlStore
from tests.conftest import hub_settings, seed
from tests.test_review_folds import moves_left, post_leaving_its_move


@pytest.fixture
def store(postgres_store: SqlStore) -> SqlStore:
    """PostgreSQL's only (conftest's postgres_store)."""
    return postgres_store


async def test_a_node_folds_the_moves_left_behind_as_it_starts(
    store: SqlStore, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = await seed(store)
    await post_leaving_its_move(store, product, "ana", 3)
    assert await moves_left(store) == 1
    # A host booted ten minutes ago: the monotonic clock reads 600 s.
    monkeypatch.setattr(hub.app.time, "monotonic", lambda: 600.0)
    app = web.Application()
    app[SETTINGS] = hub_settings(postgres_url, expiry_interval=0.05)
    app[STORE] = store
    app[METRICS] = Metrics()
    task = asyncio.create_task(hub.app._expire_forever(app))
    try:
        for _ in range(100):
            if await moves_left(store) == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert await moves_left(store) == 0
    row = await store.get_product(product)
    assert row is not None and row.rating == RatingAggregate(1, 3, (0, 0, 1, 0, 0))
