"""The short ways of a review's write (storage/sql_reviews.py), held to the same contract on every
backend: a push marked ``new`` (the caller minted the id: no read before the insert) still never
overwrites a review that has the id, and the spam signals read with a new review's insert judge it."""

from __future__ import annotations

import asyncio
import uuid

from storage.carts import PushStatus
from storage.errors import NotFound
from storage.reviews import RatingAggregate, ReviewPush, ReviewStatus
from storage.sql import SqlStore
from tests.conftest import seed
from tests.test_store_reviews import RULES, Device, keyword_screen, post, recounted


async def test_a_new_push_whose_id_exists_is_merged_into_that_review_not_over_it(store: SqlStore) -> None:
    product = await seed(store)
    review_id, _, first = await post(store, product, "ana", rating=2, text="first words of mine here")
    # The same author's creation of that id from another device (a retry the caller took for new).
    other = Device("ana-laptop").create(review_id, product, "ana", 4, "second words of mine here")
    result = await store.push_review(
        review_id, "ana", [ReviewPush("m-again", other, new=True)], RULES, keyword_screen
    )
    assert [o.status for o in result.outcomes] == [PushStatus.APPLIED]
    document = result.document
    assert document is not None and document.version == first.version + 1
    assert document.created_at == first.created_at  # the row was merged into, not written over
    assert (document.rating, document.text) == (4, "second words of mine here")
    assert await store.rating_of(product) == RatingAggregate(1, 4, (0, 0, 0, 1, 0))
    await recounted(store)


async def test_a_new_push_with_another_authors_id_changes_nothing(store: SqlStore) -> None:
    product = await seed(store)
    review_id, _, _ = await post(store, product, "ana", rating=5)
    stolen = ReviewPush(
        "m-stolen", Device("bob-x").create(review_id, product, "bob", 1, "mine now"), new=True
    )
    try:
        result = await store.push_review(review_id, "bob", [stolen], RULES, keyword_screen)
    except NotFound:
        pass  # (read first: another's review is one bob cannot see)
    else:  # (inserted first: the id is taken)
        assert [(o.status, o.code) for o in result.outcomes] == [(PushStatus.REFUSED, "wrong_review")]
    stored = await store.get_review(review_id)
    assert stored is not None and (stored.author, stored.rating) == ("ana", 5)
    await recounted(store)


async def test_signals_read_with_the_insert_hold_a_duplicate_and_a_fast_poster(store: SqlStore) -> None:
    product = await seed(store)
    text = "the very same words in both of these reviews"
    await post(store, product, "ana", text=text)
    copy_id = str(uuid.uuid4())
    copy = ReviewPush("m-copy", Device("bob-y").create(copy_id, product, "bob", 5, text.upper()), new=True)
    result = await store.push_review(copy_id, "bob", [copy], RULES, keyword_screen)
    assert result.document is not None
    assert (result.document.status, result.document.reasons) == (ReviewStatus.PENDING, ("duplicate_text",))
    products = [await seed(store, f"CY-{n}") for n in range(RULES.max_posts_per_hour + 1)]
    statuses = []
    for n, other in enumerate(products):
        rid = str(uuid.uuid4())
        push = ReviewPush(
            f"m-{n}", Device(f"cy-{n}").create(rid, other, "cy", 4, f"words number {n} of cy"), new=True
        )
        document = (await store.push_review(rid, "cy", [push], RULES, keyword_screen)).document
        assert document is not None
        statuses.append((document.status, document.reasons))
    assert statuses[:-1] == [(ReviewStatus.PUBLISHED, ())] * RULES.max_posts_per_hour
    assert statuses[-1] == (ReviewStatus.PENDING, ("posting_rate",))
    await recounted(store)


async def test_concurrent_creations_by_one_author_keep_one_live_review(store: SqlStore) -> None:
    # On PostgreSQL each inserts its row last; all but one find the author's review there and run
    # again the long way, which refuses them: one review, counted once.
    product = await seed(store)

    async def create(n: int) -> tuple[str, str | None]:
        rid = str(uuid.uuid4())
        delta = Device(f"ana-{n}").create(rid, product, "ana", 1 + n % 5, f"my take number {n} on it")
        result = await store.push_review(
            rid, "ana", [ReviewPush(f"m-{n}", delta, new=True)], RULES, keyword_screen
        )
        return rid, result.outcomes[0].code

    results = await asyncio.gather(*(create(n) for n in range(12)))
    created = [rid for rid, code in results if code is None]
    assert len(created) == 1
    assert sorted(code for _, code in results if code is not None) == ["review_exists"] * 11
    assert await store.live_review_of(product, "ana") == created[0]
    aggregate = await store.rating_of(product)
    assert aggregate is not None and aggregate.count == 1
    for rid, code in results:
        assert (await store.get_review(rid) is None) == (code is not None)
    await recounted(store)


async def test_a_new_push_with_another_users_replica_is_refused_and_writes_nothing(store: SqlStore) -> None:
    # On PostgreSQL a new push is first tried as one statement that writes only if the replica is
    # its author's: here it writes nothing, and the long way says why.
    product = await seed(store)
    ana_id = str(uuid.uuid4())
    mine = Device("ana-tablet").create(ana_id, product, "ana", 5, "my own words about it")
    await store.push_review(ana_id, "ana", [ReviewPush("m-ana", mine, new=True)], RULES, keyword_screen)
    bob_id = str(uuid.uuid4())
    other = await seed(store, "SKU-OTHER")
    taken = Device("ana-tablet").create(bob_id, other, "bob", 1, "words of bob on another")
    result = await store.push_review(
        bob_id, "bob", [ReviewPush("m-bob", taken, new=True)], RULES, keyword_screen
    )
    assert [(o.status, o.code) for o in result.outcomes] == [(PushStatus.REFUSED, "foreign_replica")]
    assert await store.get_review(bob_id) is None
    assert await store.rating_of(other) == RatingAggregate(0, 0, (0, 0, 0, 0, 0))
    await recounted(store)
