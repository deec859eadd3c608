"""REST creations of reviews on PostgreSQL committed in batches (storage/pg_statement_batches.py, the
statement ``_CREATED`` of storage/sql_reviews.py): concurrent creations share one statement and one
commit, each gets its own outcome, and the batch judges them as if each were alone — a duplicate text
or an author's second post in the same moment is still seen, a creation the statement could not write
goes the long way without costing the others theirs, and a batch that fails is sent again row by row."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from storage.carts import PushStatus
from storage.db import Tx
from storage.errors import StoreError
from storage.pg_statement_batches import StatementBatcher
from storage.reviews import RatingAggregate, ReviewPush, ReviewPushResult, ReviewRules, ReviewStatus
from storage.sql import SqlStore
from storage.sql_reviews import _creations
from tests.conftest import seed
from tests.test_store_reviews import RULES, Device, keyword_screen, recounted, review_events


@pytest.fixture
def store(postgres_store: SqlStore) -> SqlStore:
    """PostgreSQL's only (conftest's postgres_store)."""
    return postgres_store


async def create(
    store: SqlStore, product: str, author: str, rating: int, text: str, rules: ReviewRules = RULES
) -> tuple[str, ReviewPushResult]:
    """A REST creation: the hub minted the review's id (``new``), one push."""
    review_id = str(uuid.uuid4())
    delta = Device(f"rest.{author}").create(review_id, product, author, rating, text)
    push = ReviewPush(f"m-{review_id}", delta, new=True)
    return review_id, await store.push_review(review_id, author, [push], rules, keyword_screen)


async def test_concurrent_creations_share_a_statement_and_each_gets_its_own_outcome(store: SqlStore) -> None:
    product = await seed(store)
    batches = _creations(store).batches
    ratings = [1 + n % 5 for n in range(24)]
    results = await asyncio.gather(
        *(
            create(store, product, f"author-{n}", r, f"the words of review {n} here")
            for n, r in enumerate(ratings)
        )
    )
    # All of them were handed in in the same loop turn: one batch, one statement.
    assert _creations(store).batches == batches + 1
    for n, (review_id, result) in enumerate(results):
        assert [o.status for o in result.outcomes] == [PushStatus.APPLIED]
        document = result.document
        assert document is not None and document.id == review_id
        assert (document.author, document.rating, document.status) == (
            f"author-{n}",
            ratings[n],
            ReviewStatus.PUBLISHED,
        )
        stored = await store.get_review(review_id)
        assert stored is not None and (stored.author, stored.rating, stored.version) == (
            f"author-{n}",
            ratings[n],
            document.version,
        )
    one, two, three, four, five = (ratings.count(r) for r in range(1, 6))
    want = RatingAggregate(len(ratings), sum(ratings), (one, two, three, four, five))
    assert await store.rating_of(product) == want
    await recounted(store)
    published = [e for e in await review_events(store) if e["type"] == "review.published"]
    assert sorted(e["review"]["id"] for e in published) == sorted(rid for rid, _ in results)


async def test_a_duplicate_text_in_the_same_moment_is_still_held(store: SqlStore) -> None:
    # Alone, the second creation's statement sees the first's review; in one batch it would not: the
    # batcher keeps the two apart, the second goes after the first's commit and is held.
    product = await seed(store)
    text = "exactly the same words in these two reviews"
    results = await asyncio.gather(
        create(store, product, "ana", 5, text), create(store, product, "bob", 4, text.upper())
    )
    statuses = sorted((r.document.status, r.document.reasons) for _, r in results if r.document is not None)
    assert statuses == [(ReviewStatus.PENDING, ("duplicate_text",)), (ReviewStatus.PUBLISHED, ())]
    aggregate = await store.rating_of(product)
    assert aggregate is not None and aggregate.count == 1
    await recounted(store)


async def test_an_authors_posts_in_the_same_moment_count_against_the_hourly_limit(store: SqlStore) -> None:
    rules = ReviewRules(max_posts_per_hour=3)
    products = [await seed(store, f"SKU-{n}") for n in range(5)]
    results = await asyncio.gather(
        *(
            create(store, p, "cy", 4, f"cy writes review number {n} now", rules)
            for n, p in enumerate(products)
        )
    )
    statuses = [r.document.status for _, r in results if r.document is not None]
    assert statuses.count(ReviewStatus.PUBLISHED) == 3
    held = [
        r.document for _, r in results if r.document is not None and r.document.status is ReviewStatus.PENDING
    ]
    assert [d.reasons for d in held] == [("posting_rate",)] * 2
    await recounted(store)


async def test_a_creation_the_batch_could_not_write_goes_the_long_way_and_the_others_are_written(
    store: SqlStore,
) -> None:
    product = await seed(store)
    first_id, first = await create(store, product, "ana", 2, "ana reviewed this one already")
    assert first.document is not None and first.document.status is ReviewStatus.PUBLISHED
    batches = _creations(store).batches
    results = await asyncio.gather(
        create(store, product, "ana", 5, "ana tries a second review of it"),  # taken: her live review
        *(create(store, product, f"user-{n}", 4, f"a fine review number {n} of it") for n in range(6)),
    )
    assert _creations(store).batches == batches + 1
    (_, again), others = results[0], results[1:]
    assert [(o.status, o.code) for o in again.outcomes] == [(PushStatus.REFUSED, "review_exists")]
    for _, result in others:
        assert result.document is not None and result.document.status is ReviewStatus.PUBLISHED
    assert await store.live_review_of(product, "ana") == first_id
    assert await store.rating_of(product) == RatingAggregate(7, 2 + 6 * 4, (0, 1, 0, 6, 0))
    await recounted(store)


# -- the batcher itself, on a table of its own ----------------------------------------------------------

_PICKY = (
    "WITH i AS (SELECT r->>0 AS k, (r->>1)::INTEGER AS v, n"
    " FROM unnest($1::JSONB[]) WITH ORDINALITY AS e(r, n)),"
    " written AS (INSERT INTO batch_probe (k, v) SELECT k, v FROM i ON CONFLICT (k) DO NOTHING RETURNING k)"
    " SELECT i.n, i.k FROM i JOIN written USING (k)"
)


@pytest.fixture
async def probe(store: SqlStore) -> AsyncIterator[tuple[StatementBatcher, list[list[Any]]]]:
    async def ddl(tx: Tx) -> None:
        await tx.execute("DROP TABLE IF EXISTS batch_probe")
        await tx.execute("CREATE TABLE batch_probe (k TEXT PRIMARY KEY, v INTEGER NOT NULL CHECK (v >= 0))")

    async def drop(tx: Tx) -> None:
        await tx.execute("DROP TABLE batch_probe")

    await store.db.run(ddl)
    sent: list[list[Any]] = []

    async def run(work: Any) -> Any:
        async def recorded(tx: Tx) -> Any:
            class Recording:
                async def fetch(self, sql: str, *args: Any) -> Any:
                    sent.append([orjson.loads(row)[0] for row in args[0]])
                    return await tx.fetch(sql, *args)

            return await work(Recording())

        return await store.db.run(recorded, single_statement=True)

    yield StatementBatcher(run, _PICKY), sent
    await store.db.run(drop)


async def test_a_failed_batch_is_sent_again_row_by_row_and_only_the_bad_row_fails(
    probe: tuple[StatementBatcher, list[list[Any]]], store: SqlStore
) -> None:
    batcher, sent = probe
    outcomes = await asyncio.gather(
        *(batcher.submit((f"k{n}", -1 if n == 2 else n), frozenset({n})) for n in range(4)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[2], StoreError)  # the CHECK: nothing of the batch was committed
    keys = [o["k"] if o is not None and not isinstance(o, BaseException) else None for o in outcomes]
    assert keys == ["k0", "k1", None, "k3"]
    assert sent == [["k0", "k1", "k2", "k3"], ["k0"], ["k1"], ["k2"], ["k3"]]

    async def count(tx: Tx) -> int:
        row = await tx.fetchrow("SELECT COUNT(*) AS n FROM batch_probe")
        assert row is not None
        return int(row["n"])

    assert await store.db.run(count, readonly=True) == 3


async def test_rows_sharing_a_key_never_share_a_batch_nor_run_at_once(
    probe: tuple[StatementBatcher, list[list[Any]]],
) -> None:
    batcher, sent = probe
    assert await batcher.submit(("taken", 1), frozenset({"t"})) is not None
    # a, b share "x"; c is free; d shares "y" with b (so it waits behind b, first come first served);
    # a row the statement does not write (its key taken) answers None.
    rows = [("a", {"x"}), ("b", {"x", "y"}), ("c", {"z"}), ("d", {"y"}), ("taken", {"w"})]
    outcomes = await asyncio.gather(*(batcher.submit((k, 1), frozenset(keys)) for k, keys in rows))
    assert [None if o is None else o["k"] for o in outcomes] == ["a", "b", "c", "d", None]
    # b waited for the first batch (a has "x"), d for b: never in flight together.
    assert sent == [["taken"], ["a", "c", "taken"], ["b"], ["d"]]
