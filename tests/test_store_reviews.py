"""The review part of the Store contract: every guarantee of :mod:`storage.reviews`, run on every backend.

Each test takes the ``store`` fixture, so conftest runs it once on a SQLite file and once on a real
PostgreSQL database. Devices are real :class:`crdt.review.Review` replicas whose deltas travel through
the codec (JSON) before the store sees them. The screen here is a small keyword screen (a real
:class:`storage.reviews.Screener`): the store's contract is what it does with a screening, not how the
hub's screen reads a text (tests/test_moderation.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid

import pytest

from crdt import codec
from crdt.hlc import HybridClock
from crdt.review import ModerationStatus, Review
from storage.carts import PushStatus
from storage.errors import NotFound, VersionMismatch
from storage.reviews import (
    RatingAggregate,
    ReviewDocument,
    ReviewPush,
    ReviewPushResult,
    ReviewQuery,
    ReviewRefusal,
    ReviewRules,
    ReviewSort,
    ReviewStatus,
    Screening,
    Verdict,
)
from storage.sql import SqlStore
from storage.streams import reviews_stream, user_stream
from tests.conftest import seed

RULES = ReviewRules()
_mutation_ids = itertools.count(1)


def keyword_screen(text: str | None, rating: int | None, media_count: int) -> Screening:
    words = set((text or "").casefold().split())
    if "awful-word" in words:
        return Screening(Verdict.REJECT, ("profanity",))
    if "http://spam" in words:
        return Screening(Verdict.HOLD, ("link",))
    return Screening(Verdict.PUBLISH)


def wire(value: Review) -> Review:
    out = codec.from_dict(json.loads(json.dumps(codec.to_dict(value))))
    assert isinstance(out, Review)
    return out


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Device:
    """One replica of a review: it applies its own edits and returns their deltas, ready to push."""

    def __init__(self, replica: str, review: Review | None = None) -> None:
        self.replica = replica
        self.review = Review.new() if review is None else wire(review)
        self.clock = HybridClock(replica, now_ms)

    def _do(self, delta: Review) -> Review:
        delta = wire(delta)
        self.review.apply(delta)
        return delta

    def create(self, review_id: str, product: str, author: str, rating: int, text: str) -> Review:
        out = self._do(self.review.create(review_id, product, author))
        out.apply(self._do(self.review.set_rating(self.replica, rating, self.clock.now())))
        out.apply(self._do(self.review.set_text(self.replica, text, self.clock.now())))
        return wire(out)

    def rate(self, rating: int) -> Review:
        return self._do(self.review.set_rating(self.replica, rating, self.clock.now()))

    def write(self, text: str) -> Review:
        return self._do(self.review.set_text(self.replica, text, self.clock.now()))

    def delete(self) -> Review:
        return self._do(self.review.delete(self.replica))

    def erase(self) -> Review:
        return self._do(self.review.erase(self.replica))


async def push(store: SqlStore, review_id: str, author: str, *deltas: Review) -> ReviewPushResult:
    pushes = [ReviewPush(f"m-{next(_mutation_ids)}", d) for d in deltas]
    return await store.push_review(review_id, author, pushes, RULES, keyword_screen)


async def post(
    store: SqlStore, product: str, author: str, rating: int = 5, text: str = "Lovely serum, my skin drinks it"
) -> tuple[str, Device, ReviewDocument]:
    review_id = str(uuid.uuid4())
    device = Device(f"{author}-phone-{review_id[:8]}")
    result = await push(store, review_id, author, device.create(review_id, product, author, rating, text))
    assert [o.status for o in result.outcomes] == [PushStatus.APPLIED], result.outcomes
    return review_id, device, result.document


async def recounted(store: SqlStore) -> None:
    assert await store.recount_ratings() == {}


async def review_events(store: SqlStore, region: str = "default") -> list[dict]:
    return [
        json.loads(e.payload) for e in await store.read_outbox(10_000) if e.stream == reviews_stream(region)
    ]


# -- create, judge, aggregate ------------------------------------------------------------------------


async def test_a_clean_review_is_published_and_counted_in_its_products_aggregate(store: SqlStore) -> None:
    product = await seed(store)
    review_id, _, document = await post(store, product, "ana", rating=4)
    assert document.status is ReviewStatus.PUBLISHED
    assert document.rating == 4 and document.text == "Lovely serum, my skin drinks it"
    assert await store.rating_of(product) == RatingAggregate(1, 4, (0, 0, 0, 1, 0))
    stored = await store.get_review(review_id)
    assert stored is not None and stored.review is not None
    moderation = stored.review.moderation
    assert moderation is not None and moderation.status is ModerationStatus.PUBLISHED
    assert stored.review.status() is ModerationStatus.PUBLISHED  # the judgment covers every write
    await recounted(store)


async def test_the_screens_verdicts_hold_and_reject_and_neither_counts(store: SqlStore) -> None:
    product = await seed(store)
    _, _, held = await post(store, product, "ana", text="see http://spam now")
    _, _, rejected = await post(store, product, "bob", text="an awful-word here")
    assert (held.status, held.reasons) == (ReviewStatus.PENDING, ("link",))
    assert (rejected.status, rejected.reasons) == (ReviewStatus.REJECTED, ("profanity",))
    assert await store.rating_of(product) == RatingAggregate(0, 0, (0, 0, 0, 0, 0))
    assert await review_events(store) == []  # nothing unpublished reaches the public stream
    await recounted(store)


async def test_one_live_review_per_product_and_author(store: SqlStore) -> None:
    product = await seed(store)
    first, _, _ = await post(store, product, "ana")
    second = str(uuid.uuid4())
    result = await push(store, second, "ana", Device("ana-tab").create(second, product, "ana", 3, "again"))
    assert result.outcomes[0].status is PushStatus.REFUSED and result.outcomes[0].code == "review_exists"
    assert await store.get_review(second) is None
    assert await store.live_review_of(product, "ana") == first


async def test_after_a_delete_the_author_may_review_the_product_again(store: SqlStore) -> None:
    product = await seed(store)
    first, device, _ = await post(store, product, "ana", rating=2)
    await push(store, first, "ana", device.delete())
    second, _, document = await post(store, product, "ana", rating=5)
    assert document.status is ReviewStatus.PUBLISHED
    assert await store.rating_of(product) == RatingAggregate(1, 5, (0, 0, 0, 0, 1))
    assert await store.live_review_of(product, "ana") == second


async def test_a_review_of_an_unknown_product_is_refused_and_nothing_is_written(store: SqlStore) -> None:
    review_id = str(uuid.uuid4())
    product = str(uuid.uuid4())
    result = await push(store, review_id, "ana", Device("ana-x").create(review_id, product, "ana", 5, "hi"))
    assert result.document is None and result.outcomes[0].code == "product_not_found"
    assert await store.get_review(review_id) is None


async def test_a_first_delta_that_does_not_name_the_review_creates_nothing(store: SqlStore) -> None:
    review_id = str(uuid.uuid4())
    device = Device("ana-y")
    result = await push(store, review_id, "ana", device.rate(5))
    assert result.document is None and result.outcomes[0].code == "not_created"
    assert await store.get_review(review_id) is None


# -- refusals change nothing -------------------------------------------------------------------------


async def test_a_client_delta_carrying_a_moderation_is_refused(store: SqlStore) -> None:
    product = await seed(store)
    review_id, device, before = await post(store, product, "ana", rating=1)
    forged = wire(device.review.moderate(99, ModerationStatus.PUBLISHED))
    result = await push(store, review_id, "ana", forged)
    assert result.outcomes[0].code == "moderation_forbidden"
    after = await store.get_review(review_id)
    assert after is not None and after.version == before.version and after.review == before.review


async def test_another_users_delta_cannot_touch_a_review(store: SqlStore) -> None:
    product = await seed(store)
    review_id, device, _ = await post(store, product, "ana", rating=3)
    with pytest.raises(NotFound):
        await push(store, review_id, "mallory", device.rate(1))
    stored = await store.get_review(review_id)
    assert stored is not None and stored.rating == 3


async def test_a_replica_bound_to_another_user_is_refused(store: SqlStore) -> None:
    product = await seed(store)
    _, _, _ = await post(store, product, "ana")
    bob_id = str(uuid.uuid4())
    stolen = Device("ana-phone-shared")  # ana's replica id, used by bob
    ana_id = str(uuid.uuid4())
    other_product = await seed(store, "SKU-2")
    await push(store, ana_id, "ana", stolen.create(ana_id, other_product, "ana", 4, "mine"))
    thief = Device("ana-phone-shared")
    result = await push(store, bob_id, "bob", thief.create(bob_id, product, "bob", 1, "bad"))
    assert result.outcomes[0].code == "foreign_replica"
    assert await store.get_review(bob_id) is None


async def test_text_past_the_limit_and_clock_skew_are_refused(store: SqlStore) -> None:
    product = await seed(store)
    review_id, device, before = await post(store, product, "ana")
    long = await push(store, review_id, "ana", device.write("x" * (RULES.max_text + 1)))
    assert long.outcomes[0].code == "text_too_long"
    ahead = Device(device.replica, device.review)
    ahead.clock = HybridClock(device.replica, lambda: now_ms() + 10 * RULES.max_drift_ms)
    skewed = await push(store, review_id, "ana", ahead.rate(2))
    assert skewed.outcomes[0].code == "clock_skew"
    after = await store.get_review(review_id)
    assert after is not None and after.version == before.version


async def test_a_retried_mutation_id_applies_once(store: SqlStore) -> None:
    product = await seed(store)
    review_id, device, _ = await post(store, product, "ana", rating=5)
    delta = device.rate(2)
    first = await store.push_review(review_id, "ana", [ReviewPush("retry-1", delta)], RULES, keyword_screen)
    again = await store.push_review(review_id, "ana", [ReviewPush("retry-1", delta)], RULES, keyword_screen)
    assert first.outcomes[0].status is PushStatus.APPLIED
    assert again.outcomes[0].status is PushStatus.DUPLICATE
    assert again.outcomes[0].version == first.outcomes[0].version
    assert await store.rating_of(product) == RatingAggregate(1, 2, (0, 1, 0, 0, 0))


# -- the review rules through the store --------------------------------------------------------------


async def test_two_devices_edits_converge_and_the_later_rating_wins(store: SqlStore) -> None:
    product = await seed(store)
    review_id, phone, _ = await post(store, product, "ana", rating=3)
    tablet = Device("ana-tablet", phone.review)
    tablet.clock = HybridClock("ana-tablet", lambda: now_ms() + 50)  # its edit is the later one
    offline_phone = phone.rate(4)
    offline_tablet = tablet.rate(1)
    await push(store, review_id, "ana", offline_tablet)
    result = await push(store, review_id, "ana", offline_phone)
    document = result.document
    assert document.review is not None
    value = document.review.value()
    assert value is not None and value.rating == 1 and 4 in value.rating_conflicts
    assert document.rating == 1
    assert await store.rating_of(product) == RatingAggregate(1, 1, (1, 0, 0, 0, 0))
    await recounted(store)


async def test_delete_wins_over_a_concurrent_edit_and_the_aggregate_drops_it(store: SqlStore) -> None:
    product = await seed(store)
    review_id, phone, _ = await post(store, product, "ana", rating=5)
    stale = Device("ana-old-tab", phone.review)
    await push(store, review_id, "ana", phone.delete())
    result = await push(store, review_id, "ana", stale.write("I changed my mind, it is great"))
    assert result.outcomes[0].status is PushStatus.APPLIED  # merged, never shown
    assert result.document.status is ReviewStatus.DELETED and result.document.text is None
    assert await store.rating_of(product) == RatingAggregate(0, 0, (0, 0, 0, 0, 0))
    events = await review_events(store)
    assert [e["type"] for e in events] == [
        "review.published",
        "rating.changed",
        "review.removed",
        "rating.changed",
    ]
    await recounted(store)


async def test_erasure_is_absorbing_against_a_stale_device(store: SqlStore) -> None:
    product = await seed(store)
    review_id, phone, _ = await post(store, product, "ana", rating=2, text="private words about my skin")
    stale = Device("ana-stale", phone.review)
    await push(store, review_id, "ana", phone.erase())
    result = await push(store, review_id, "ana", stale.write("bring it back"), wire(stale.review))
    document = result.document
    assert document.status is ReviewStatus.ERASED and document.text is None and document.rating is None
    assert document.review is not None and not document.review.has_content()
    page = await store.list_reviews(ReviewQuery(product, q="private"))
    assert page.items == []
    await recounted(store)


async def test_an_edit_after_publication_is_judged_again(store: SqlStore) -> None:
    product = await seed(store)
    review_id, phone, _ = await post(store, product, "ana", rating=5)
    result = await push(store, review_id, "ana", phone.write("now see http://spam"))
    assert result.document.status is ReviewStatus.PENDING and result.document.reasons == ("link",)
    assert await store.rating_of(product) == RatingAggregate(0, 0, (0, 0, 0, 0, 0))
    assert [e["type"] for e in await review_events(store)][-2:] == ["review.removed", "rating.changed"]
    await recounted(store)


async def test_duplicate_text_across_reviews_is_held(store: SqlStore) -> None:
    product = await seed(store)
    text = "Best cream ever bought, buy it now"
    await post(store, product, "ana", text=text)
    _, _, copy = await post(store, product, "bob", text="best cream EVER bought... buy it now!")
    assert (copy.status, copy.reasons) == (ReviewStatus.PENDING, ("duplicate_text",))


async def test_an_authors_posting_rate_past_the_rule_is_held(store: SqlStore) -> None:
    rules = ReviewRules(max_posts_per_hour=2)
    statuses = []
    for n in range(3):
        product = await seed(store, f"SKU-R{n}")
        review_id = str(uuid.uuid4())
        delta = Device(f"ana-r{n}").create(review_id, product, "ana", 4, f"review number {n}")
        result = await store.push_review(review_id, "ana", [ReviewPush("m", delta)], rules, keyword_screen)
        statuses.append((result.document.status, result.document.reasons))
    assert statuses[:2] == [(ReviewStatus.PUBLISHED, ())] * 2
    assert statuses[2] == (ReviewStatus.PENDING, ("posting_rate",))


# -- moderation, reports, votes ----------------------------------------------------------------------


async def test_a_moderators_decision_is_the_servers_own_record_and_moves_the_aggregate(
    store: SqlStore,
) -> None:
    product = await seed(store)
    review_id, _, held = await post(store, product, "ana", rating=3, text="look http://spam")
    published = await store.moderate_review(review_id, ReviewStatus.PUBLISHED, (), held.version)
    assert published.status is ReviewStatus.PUBLISHED and published.version == held.version + 1
    assert published.review is not None and published.review.status() is ModerationStatus.PUBLISHED
    assert await store.rating_of(product) == RatingAggregate(1, 3, (0, 0, 1, 0, 0))
    rejected = await store.moderate_review(review_id, ReviewStatus.REJECTED, ("off_topic",))
    assert rejected.reasons == ("off_topic",)
    assert await store.rating_of(product) == RatingAggregate(0, 0, (0, 0, 0, 0, 0))
    await recounted(store)


async def test_a_decision_on_a_version_the_author_has_since_changed_is_refused(store: SqlStore) -> None:
    product = await seed(store)
    review_id, phone, held = await post(store, product, "ana", rating=3, text="look http://spam")
    await push(store, review_id, "ana", phone.write("look http://spam again"))
    with pytest.raises(VersionMismatch):
        await store.moderate_review(review_id, ReviewStatus.PUBLISHED, (), held.version)
    stored = await store.get_review(review_id)
    assert stored is not None and stored.status is ReviewStatus.PENDING


async def test_a_moderation_judges_the_state_it_saw_and_a_concurrent_device_edit_reads_pending(
    store: SqlStore,
) -> None:
    product = await seed(store)
    review_id, phone, _ = await post(store, product, "ana", rating=4)
    offline = phone.rate(2)  # made before the moderator's decision, pushed after it
    await store.moderate_review(review_id, ReviewStatus.FLAGGED, ("checking",))
    result = await push(store, review_id, "ana", offline)
    # The edit is judged anew; a flagged review waits for a person even if the screen would publish.
    assert result.document.status is ReviewStatus.PENDING
    assert result.document.reasons == ("previously_flagged",)


async def test_reports_from_enough_users_flag_a_published_review_once(store: SqlStore) -> None:
    product = await seed(store)
    review_id, _, _ = await post(store, product, "ana", rating=5)
    outcomes = []
    for reporter in ("r1", "r1", "r2", "r3"):
        document, new = await store.report_review(review_id, reporter, "spam", RULES)
        outcomes.append((new, document.status))
    assert outcomes == [
        (True, ReviewStatus.PUBLISHED),
        (False, ReviewStatus.PUBLISHED),
        (True, ReviewStatus.PUBLISHED),
        (True, ReviewStatus.FLAGGED),
    ]
    assert await store.rating_of(product) == RatingAggregate(0, 0, (0, 0, 0, 0, 0))
    with pytest.raises(NotFound):  # no longer published: nothing to report
        await store.report_review(review_id, "r4", "spam", RULES)


async def test_helpful_votes_count_once_per_user_and_never_the_authors_own(store: SqlStore) -> None:
    product = await seed(store)
    review_id, _, _ = await post(store, product, "ana")
    assert await store.vote_helpful(review_id, "bob") == (1, True)
    assert await store.vote_helpful(review_id, "bob") == (1, False)
    assert await store.vote_helpful(review_id, "cy") == (2, True)
    with pytest.raises(ReviewRefusal) as refused:
        await store.vote_helpful(review_id, "ana")
    assert refused.value.code == "own_review"


# -- listings ----------------------------------------------------------------------------------------


async def test_listings_sort_filter_and_page_without_repeats(store: SqlStore) -> None:
    product = await seed(store)
    ratings = [5, 1, 3, 5, 2, 4, 3, 1, 5, 4]
    ids = []
    for n, rating in enumerate(ratings):
        review_id, _, _ = await post(
            store, product, f"user{n}", rating=rating, text=f"entry {n} of the listing"
        )
        ids.append(review_id)
    for voter in ("v1", "v2"):
        await store.vote_helpful(ids[2], voter)
    await store.vote_helpful(ids[7], "v1")

    async def walk(**kw: object) -> list[ReviewDocument]:
        out: list[ReviewDocument] = []
        after = None
        while True:
            page = await store.list_reviews(ReviewQuery(product, limit=3, after=after, **kw))  # type: ignore[arg-type]
            out += page.items
            if page.next_after is None:
                return out
            after = page.next_after

    newest = await walk()
    assert [d.id for d in newest] == ids[::-1]
    highest = await walk(sort=ReviewSort.HIGHEST)
    assert [d.rating for d in highest] == sorted(ratings, reverse=True)
    lowest = await walk(sort=ReviewSort.LOWEST)
    assert [d.rating for d in lowest] == sorted(ratings)
    helpful = await walk(sort=ReviewSort.HELPFUL)
    assert [d.id for d in helpful[:2]] == [ids[2], ids[7]]
    assert len({d.id for d in helpful}) == len(ratings)
    ranged = await walk(min_rating=3, max_rating=4)
    assert sorted(d.rating for d in ranged) == [3, 3, 4, 4]
    by_author = await walk(author="user3")
    assert [d.id for d in by_author] == [ids[3]]


async def test_search_finds_every_word_in_published_text_only_on_both_backends(store: SqlStore) -> None:
    product = await seed(store)
    await post(store, product, "ana", text="The hydrating serum smells of roses")
    await post(store, product, "bob", text="Hydrating but sticky")
    await post(store, product, "cy", text="hydrating roses http://spam")  # held: not searchable publicly
    found = await store.list_reviews(ReviewQuery(product, q="HYDRATING roses"))
    assert [d.author for d in found.items] == ["ana"]
    both = await store.list_reviews(ReviewQuery(product, q="hydrating"))
    assert sorted(d.author for d in both.items) == ["ana", "bob"]
    held = await store.list_reviews(ReviewQuery(product, q="roses", statuses=(ReviewStatus.PENDING,)))
    assert [d.author for d in held.items] == ["cy"]
    assert (await store.list_reviews(ReviewQuery(product, q='" OR *'))).items == []
    assert (await store.list_reviews(ReviewQuery(product, q="lavender"))).items == []


async def test_the_moderation_queue_is_oldest_first_across_products(store: SqlStore) -> None:
    first = await seed(store)
    second = await seed(store, "SKU-2")
    a, _, _ = await post(store, first, "ana", text="visit http://spam")
    b, _, _ = await post(store, second, "bob", text="visit http://spam too")
    c, _, _ = await post(store, first, "cy", rating=5)
    await store.report_review(c, "r1", "spam", ReviewRules(reports_to_flag=1))
    page = await store.list_reviews(
        ReviewQuery(None, statuses=(ReviewStatus.PENDING, ReviewStatus.FLAGGED), oldest_first=True)
    )
    assert [d.id for d in page.items] == [a, b, c]


# -- events ------------------------------------------------------------------------------------------


async def test_events_go_to_the_regions_reviews_stream_and_the_authors_user_stream(store: SqlStore) -> None:
    product = await seed(store)
    review_id, _, document = await post(store, product, "ana", rating=4)
    entries = await store.read_outbox(1000)
    public = [e for e in entries if e.stream == reviews_stream("default")]
    assert [(e.key, json.loads(e.payload)["type"]) for e in public] == [
        (f"review:{review_id}", "review.published"),
        (f"rating:{product}", "rating.changed"),
    ]
    published = json.loads(public[0].payload)["review"]
    assert published["text"] == document.text and "reasons" not in published
    rating = json.loads(public[1].payload)["rating"]
    assert rating == {"count": 1, "average": 4.0, "histogram": {"1": 0, "2": 0, "3": 0, "4": 1, "5": 0}}
    private = [json.loads(e.payload) for e in entries if e.stream == user_stream("default", "ana")]
    assert [(p["type"], p["status"], p["review_id"]) for p in private] == [
        ("review.status", "published", review_id)
    ]


# -- aggregates under concurrency --------------------------------------------------------------------


async def test_concurrent_writes_to_one_products_reviews_keep_its_aggregate_exact(database_url: str) -> None:
    """Two stores (two nodes' pools) create, edit, delete, erase and moderate reviews of one hot product
    at once; the aggregate equals a recount of the rows at the end."""
    from storage.factory import open_store

    stores = [open_store(database_url), open_store(database_url)]
    for s in stores:
        await s.open()
        await s.migrate()
    try:
        product = await seed(stores[0])
        rng = random.Random(7)
        devices: dict[str, tuple[str, Device]] = {}

        async def author(n: int) -> None:
            store = stores[n % 2]
            sub = f"user{n}"
            review_id = str(uuid.uuid4())
            device = Device(f"{sub}-dev")
            await push(
                store, review_id, sub, device.create(review_id, product, sub, rng.randint(1, 5), f"text {n}")
            )
            devices[sub] = (review_id, device)
            for _ in range(3):
                action = rng.random()
                if action < 0.5:
                    await push(store, review_id, sub, device.rate(rng.randint(1, 5)))
                elif action < 0.6:
                    await stores[(n + 1) % 2].moderate_review(
                        review_id, rng.choice(list(ReviewStatus)[:4]), ()
                    )
                elif action < 0.7:
                    await push(store, review_id, sub, device.delete())
                    return
                elif action < 0.75:
                    await push(store, review_id, sub, device.erase())
                    return
                else:
                    await push(store, review_id, sub, device.write(f"new text {rng.random()}"))

        await asyncio.gather(*(author(n) for n in range(40)))
        await recounted(stores[0])
        aggregate = await stores[0].rating_of(product)
        assert aggregate is not None and aggregate.count > 0
    finally:
        for s in stores:
            await s.close()


async def test_purged_mutation_ids_merge_again_and_change_nothing(store: SqlStore) -> None:
    product = await seed(store)
    review_id, device, _ = await post(store, product, "ana", rating=5)
    delta = device.rate(3)
    first = await store.push_review(review_id, "ana", [ReviewPush("old-1", delta)], RULES, keyword_screen)
    assert await store.purge_review_mutations(time.time_ns() // 1000 + 1) >= 2
    again = await store.push_review(review_id, "ana", [ReviewPush("old-1", delta)], RULES, keyword_screen)
    assert again.outcomes[0].status is PushStatus.APPLIED
    assert again.document is not None and first.document is not None
    assert again.document.version == first.document.version  # a join of what it holds changes nothing
    assert await store.rating_of(product) == RatingAggregate(1, 3, (0, 0, 1, 0, 0))


async def test_a_refused_creation_binds_no_replica(store: SqlStore) -> None:
    review_id = str(uuid.uuid4())
    result = await push(
        store, review_id, "ana", Device("ana-unbound").create(review_id, str(uuid.uuid4()), "ana", 5, "x")
    )
    assert result.outcomes[0].code == "product_not_found"

    async def bound(tx):  # type: ignore[no-untyped-def]
        return await tx.fetchrow("SELECT owner FROM replicas WHERE replica_id = $1", "ana-unbound")

    assert await store.db.run(bound, readonly=True) is None


async def test_one_new_review_pushed_through_two_nodes_at_once_is_created_once(database_url: str) -> None:
    """The same device's first push, retried through another node while the first is in flight."""
    from storage.factory import open_store

    stores = [open_store(database_url), open_store(database_url)]
    for s in stores:
        await s.open()
        await s.migrate()
    try:
        product = await seed(stores[0])
        review_id = str(uuid.uuid4())
        delta = Device("ana-race").create(review_id, product, "ana", 4, "first words here")
        for attempt in range(5):
            rid = review_id if attempt == 0 else str(uuid.uuid4())
            d = (
                delta
                if attempt == 0
                else Device(f"ana-race{attempt}").create(
                    rid, await seed(stores[0], f"S{attempt}"), "ana", 4, f"words {attempt} here ok"
                )
            )
            results = await asyncio.gather(
                *(
                    s.push_review(rid, "ana", [ReviewPush(f"first-{attempt}", d)], RULES, keyword_screen)
                    for s in stores
                )
            )
            statuses = sorted(r.outcomes[0].status.value for r in results)
            assert statuses in (["applied", "duplicate"], ["applied", "applied"]), statuses
            stored = await stores[0].get_review(rid)
            assert stored is not None and stored.status is ReviewStatus.PUBLISHED
        await recounted(stores[0])
    finally:
        for s in stores:
            await s.close()


async def test_a_push_that_adds_nothing_new_judges_nothing_and_tells_no_one(store: SqlStore) -> None:
    product = await seed(store)
    review_id, device, before = await post(store, product, "ana", rating=4)
    events = len(await store.read_outbox(1000))
    result = await push(store, review_id, "ana", wire(device.review))  # all of it, held already
    assert result.outcomes[0].status is PushStatus.APPLIED
    assert result.document is not None and result.document.version == before.version
    stored = await store.get_review(review_id)
    assert stored is not None and stored.review == before.review
    assert len(await store.read_outbox(1000)) == events


async def test_a_review_held_for_its_authors_posting_rate_stays_held_after_a_clean_edit(
    store: SqlStore,
) -> None:
    rules = ReviewRules(max_posts_per_hour=1)
    product = await seed(store)
    await store.push_review(
        (first := str(uuid.uuid4())),
        "ana",
        [ReviewPush("a", Device("ana-1").create(first, product, "ana", 4, "one"))],
        rules,
        keyword_screen,
    )
    other = await seed(store, "SKU-2")
    second = str(uuid.uuid4())
    device = Device("ana-2")
    held = await store.push_review(
        second, "ana", [ReviewPush("b", device.create(second, other, "ana", 4, "two"))], rules, keyword_screen
    )
    assert held.document is not None and held.document.reasons == ("posting_rate",)
    edited = await store.push_review(second, "ana", [ReviewPush("c", device.rate(5))], rules, keyword_screen)
    assert edited.document is not None and edited.document.status is ReviewStatus.PENDING
    assert "posting_rate" in edited.document.reasons


async def test_authors_cannot_report_their_own_review_and_a_publication_settles_reports(
    store: SqlStore,
) -> None:
    product = await seed(store)
    review_id, _, _ = await post(store, product, "ana")
    with pytest.raises(ReviewRefusal) as refused:
        await store.report_review(review_id, "ana", "spam", RULES)
    assert refused.value.code == "own_review"
    rules = ReviewRules(reports_to_flag=2)
    await store.report_review(review_id, "r1", "spam", rules)
    flagged, _ = await store.report_review(review_id, "r2", "spam", rules)
    assert flagged.status is ReviewStatus.FLAGGED and flagged.reports == 2
    republished = await store.moderate_review(review_id, ReviewStatus.PUBLISHED, ())
    assert republished.reports == 0
    again, new = await store.report_review(review_id, "r1", "spam", rules)  # counts anew, one of two
    assert new and again.status is ReviewStatus.PUBLISHED and again.reports == 1


async def test_a_published_review_without_a_rating_is_listed_but_not_counted(store: SqlStore) -> None:
    product = await seed(store)
    review_id = str(uuid.uuid4())
    device = Device("ana-unrated")
    delta = wire(device.review.create(review_id, product, "ana"))
    device.review.apply(delta)
    delta.apply(device.write("words only, no stars"))
    result = await push(store, review_id, "ana", delta)
    assert result.document is not None and result.document.reasons == ("no_rating",)
    await store.moderate_review(review_id, ReviewStatus.PUBLISHED, ())
    assert await store.rating_of(product) == RatingAggregate(0, 0, (0, 0, 0, 0, 0))
    assert [d.id for d in (await store.list_reviews(ReviewQuery(product))).items] == [review_id]
    await recounted(store)


async def test_search_matches_words_with_letters_outside_ascii(store: SqlStore) -> None:
    product = await seed(store)
    await post(store, product, "ana", text="Smells like the Straße after rain")
    found = await store.list_reviews(ReviewQuery(product, q="straße"))
    assert [d.author for d in found.items] == ["ana"]
