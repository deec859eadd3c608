"""A product's rating aggregate on PostgreSQL moved by appended moves folded in after commit
(storage/rating_folds.py): exact under concurrent writes of one product, exact while a fold has failed,
and the runs of one key coalesced — a request is served by a run that began after it."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter

import pytest

from storage.carts import PushStatus
from storage.rating_folds import KeyedRuns
from storage.reviews import RatingAggregate, ReviewStatus
from storage.sql import SqlStore
from tests.conftest import seed
from tests.test_store_reviews import Device, post, push, recounted, review_events

# -- KeyedRuns ------------------------------------------------------------------------------------------


async def test_requests_made_during_a_run_share_the_next_run() -> None:
    gates: list[asyncio.Event] = []
    started: list[str] = []

    async def run(key: str) -> None:
        started.append(key)
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()

    runs = KeyedRuns(run)
    first = runs.request("p")
    await asyncio.sleep(0)
    assert started == ["p"]  # the first run has begun: later requests need the next one
    second, third = runs.request("p"), runs.request("p")
    assert second is third and second is not first
    gates[0].set()
    assert await first is None
    await asyncio.sleep(0)
    assert not second.done() and started == ["p", "p"]
    gates[1].set()
    assert await second is None
    assert started == ["p", "p"]


async def test_a_run_of_one_key_does_not_hold_up_another_and_a_failure_is_handed_to_its_waiters() -> None:
    blocked = asyncio.Event()
    calls: Counter[str] = Counter()

    async def run(key: str) -> None:
        calls[key] += 1
        if key == "slow":
            await blocked.wait()
        if key == "bad" and calls[key] == 1:
            raise RuntimeError("database away")

    runs = KeyedRuns(run)
    slow = runs.request("slow")
    failure = await runs.request("bad")
    assert isinstance(failure, RuntimeError) and not slow.done()
    assert await runs.request("bad") is None  # the next request runs again
    blocked.set()
    assert await slow is None
    assert calls == {"slow": 1, "bad": 2}


async def test_a_stopped_run_leaves_no_waiter_hanging() -> None:
    async def run(key: str) -> None:
        await asyncio.Event().wait()

    runs = KeyedRuns(run)
    first = runs.request("p")
    await asyncio.sleep(0)
    second = runs.request("p")
    runs._workers["p"].cancel()  # what closing the loop does to it
    assert isinstance(await first, asyncio.CancelledError)
    assert isinstance(await second, RuntimeError)
    assert runs._workers == {} and runs._waiting == {}


# -- the store (PostgreSQL; SQLite has one writer and moves the row in the review's transaction) ------


@pytest.fixture
def store(postgres_store: SqlStore) -> SqlStore:
    """PostgreSQL's only (conftest's postgres_store)."""
    return postgres_store


async def moves_left(store: SqlStore) -> int:
    async def work(tx):  # type: ignore[no-untyped-def]
        row = await tx.fetchrow("SELECT COUNT(*) AS n FROM rating_moves")
        return int(row["n"])

    return int(await store.db.run(work, readonly=True, single_statement=True))


async def test_concurrent_writes_of_one_product_fold_into_an_exact_row(store: SqlStore) -> None:
    product = await seed(store)
    rng = random.Random(14)
    ratings = [rng.choice([1, 2, 3, 4, 5, 5, 5]) for _ in range(120)]
    created = await asyncio.gather(
        *(
            post(store, product, f"user-{i}", rating=r, text=f"words of review number {i} here")
            for i, r in enumerate(ratings)
        )
    )
    # And concurrently: a third of them re-rated, a tenth deleted, some held by the screen.
    deleted = {review_id for review_id, _, _ in created[::10]}

    async def change(i: int, review_id: str, device: Device) -> None:
        if review_id in deleted:
            await push(store, review_id, f"user-{i}", device.delete())
        elif i % 3 == 1:
            await push(store, review_id, f"user-{i}", device.rate(1 + i % 5))
        elif i % 7 == 2:
            await push(store, review_id, f"user-{i}", device.write("now see http://spam"))

    await asyncio.gather(*(change(i, rid, dev) for i, (rid, dev, _) in enumerate(created)))
    histogram = [0] * 5
    for review_id, _, _ in created:
        document = await store.get_review(review_id)
        assert document is not None
        if document.status is ReviewStatus.PUBLISHED:
            assert document.rating is not None
            histogram[document.rating - 1] += 1
    want = RatingAggregate(
        sum(histogram), sum((n + 1) * h for n, h in enumerate(histogram)), tuple(histogram)
    )
    assert 0 < want.count < len(created)
    assert await store.rating_of(product) == want
    # Every write returned after a fold that took its move: the row alone is exact too.
    assert await moves_left(store) == 0
    row = await store.get_product(product)
    assert row is not None and row.rating == want
    await recounted(store)
    # The last rating.changed carries the final aggregate, and the version counts every move.
    changes = [e for e in await review_events(store) if e["type"] == "rating.changed"]
    last = max(changes, key=lambda e: e["version"])
    assert last["rating"]["count"] == want.count and last["version"] == row.rating_version
    moved = len(created)  # each published once, then each change of what counts moves it
    for i, (review_id, _, _) in enumerate(created):
        if review_id in deleted or (i % 3 != 1 and i % 7 == 2) or (i % 3 == 1 and 1 + i % 5 != ratings[i]):
            moved += 1
    assert row.rating_version == moved


async def test_a_failed_fold_leaves_its_move_counted_until_the_next_fold(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = await seed(store)

    async def failing(key: tuple[str, str]) -> None:
        raise ConnectionError("the fold's connection dropped")

    monkeypatch.setattr(store, "_fold_rating", failing)
    _, _, first = await post(store, product, "ana", rating=4)
    assert first.status is ReviewStatus.PUBLISHED  # committed: the failed fold does not fail the write
    assert await store.rating_of(product) == RatingAggregate(1, 4, (0, 0, 0, 1, 0))
    row = await store.get_product(product)
    assert row is not None and row.rating.count == 0  # the row alone lags until a fold
    assert await moves_left(store) == 1
    await recounted(store)

    monkeypatch.undo()
    await post(store, product, "bob", rating=2, text="A second opinion, in other words")
    row = await store.get_product(product)
    assert row is not None and row.rating == RatingAggregate(2, 6, (0, 1, 0, 1, 0))
    assert row.rating_version == 2 and await moves_left(store) == 0
    [change] = [e for e in await review_events(store) if e["type"] == "rating.changed"]
    assert change["version"] == 2 and change["rating"]["count"] == 2
    await recounted(store)


async def post_leaving_its_move(store: SqlStore, product: str, author: str, rating: int) -> None:
    """A post whose fold fails after its commit (a dropped connection, a node stopped): its move stays."""

    async def failing(key: tuple[str, str]) -> None:
        raise ConnectionError("the fold's connection dropped")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "_fold_rating", failing)
        await post(store, product, author, rating=rating)


async def test_the_hourly_purge_folds_moves_a_failed_fold_left(store: SqlStore) -> None:
    product = await seed(store)
    await post_leaving_its_move(store, product, "ana", 5)
    assert await moves_left(store) == 1
    await store.purge_review_mutations(0)
    row = await store.get_product(product)
    assert row is not None and row.rating == RatingAggregate(1, 5, (0, 0, 0, 0, 1))
    assert await moves_left(store) == 0
    await recounted(store)


async def test_a_refused_push_appends_no_move(store: SqlStore) -> None:
    product = await seed(store)
    await post(store, product, "ana", rating=3)
    second = str(uuid.uuid4())
    result = await push(store, second, "ana", Device("ana-tab").create(second, product, "ana", 5, "again"))
    assert result.outcomes[0].status is PushStatus.REFUSED
    assert await moves_left(store) == 0
    row = await store.get_product(product)
    assert row is not None and row.rating == RatingAggregate(1, 3, (0, 0, 1, 0, 0))
    assert row.rating_version == 1
