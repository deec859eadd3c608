"""What a review's write checks and reads before it writes (storage/sql_reviews.py writes it): the
delta merged under the rules with its replicas bound, the new review's row, and the store's spam
signals with the automatic judgment. On PostgreSQL the signals of a new review's text ride on a
statement the write sends anyway (the replica's binding, or the row's insert)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from crdt.review import Review, ReviewGoneError
from storage.db import Tx
from storage.reviews import (
    ReviewDocument,
    ReviewPush,
    ReviewRefusal,
    ReviewRules,
    ReviewStatus,
    Screener,
    Screening,
    Verdict,
)
from storage.sql_core import bind_replica
from storage.sql_review_reads import _WORD, search_words

HOUR_US = 3_600_000_000


# (cached: a write asks for its text's hash up to three times — the signals' read, the screen, the
# projection — and its words are cut twice each time; 256 covers the posts in flight many times over)
@functools.lru_cache(maxsize=256)
def _body_hash(text: str | None) -> str | None:
    """The text as the duplicate check compares it: case, spacing and punctuation do not matter."""
    words = search_words(text or "") if text else []
    if len(words) < 4:  # "Great product" twice is not spam
        return None
    folded = " ".join(w.casefold() for w in _WORD.findall(text or ""))
    return hashlib.sha256(folded.encode()).hexdigest()


def _make_delta(push: ReviewPush, review: Review) -> Review:
    if isinstance(push.delta, Review):
        return push.delta
    try:
        return push.delta(review)
    except ReviewGoneError as exc:
        raise ReviewRefusal("review_gone", str(exc)) from exc
    except ValueError as exc:
        raise ReviewRefusal("invalid_edit", str(exc)[:200]) from exc


async def _checked_merge(
    tx: Tx,
    review: Review,
    delta: Review,
    review_id: str,
    author: str,
    rules: ReviewRules,
    ts: int,
    dialect: str,
    signals_of: str | None = None,
    unbound: list[str] | None = None,
) -> tuple[Review, _Signals | None]:
    """``review`` merged with ``delta`` if the delta keeps the rules (storage.reviews); ReviewRefusal
    if not. Every check runs before anything is written. ``signals_of``: a new review's id, whose spam
    signals (of the merged text) PostgreSQL reads with the replica's binding, if it binds one.
    ``unbound``: the replicas the delta brings are added to it, not bound (the caller's statement
    binds them)."""
    if delta.carries_moderation():
        raise ReviewRefusal("moderation_forbidden", "only the hub writes a review's moderation")
    if delta.review_id not in (None, review_id):
        raise ReviewRefusal("wrong_review", "the delta names another review")
    stamp = delta.max_timestamp()
    if stamp is not None and stamp.wall_ms > ts // 1000 + rules.max_drift_ms:
        raise ReviewRefusal(
            "clock_skew",
            f"the delta's clock is {stamp.wall_ms - ts // 1000} ms ahead of the hub's"
            f" (at most {rules.max_drift_ms}): set it from the hub's time and write again",
        )
    new_replicas = sorted({dot.replica for dot in delta.context.dots() if not review.context.contains(dot)})
    if any(replica.startswith("~") for replica in new_replicas):
        raise ReviewRefusal("foreign_replica", "replica ids starting with '~' are the hub's")
    try:
        merged = review.merge(delta)
    except ValueError as exc:  # two different identities
        raise ReviewRefusal("wrong_review", str(exc)[:200]) from exc
    if merged.review_id is None:
        raise ReviewRefusal("not_created", "a new review's first delta names it (create)")
    value = merged.value()
    if value is not None:
        if value.author != author:
            raise ReviewRefusal("wrong_author", "a review is written by its author only")
        if value.text is not None and len(value.text) > rules.max_text:
            raise ReviewRefusal("text_too_long", f"a review's text is at most {rules.max_text} characters")
        if len(value.media) > rules.max_media:
            raise ReviewRefusal("too_many_media", f"a review holds at most {rules.max_media} media")
    signals = None
    if unbound is not None:
        unbound += new_replicas
        return merged, None
    for replica in new_replicas:
        if dialect == "postgres":
            # Bound on first use, found or bound in one round trip: the statement's snapshot shows
            # the existing binding, or the INSERT returns the new one (of two users binding one id
            # at once, one does; a binding committed after the snapshot shows in the next read).
            if signals_of is not None and signals is None:
                body_hash = _body_hash(value.text if value is not None else None)
                row = await tx.fetchrow(
                    _BIND_WITH_SIGNALS, replica, author, ts, body_hash, signals_of, ts - HOUR_US
                )
                assert row is not None
                signals = _Signals(body_hash, bool(row["duplicate"]), int(row["posted"]))
                bound = row if row["owner"] is not None else None
            else:
                bound = await tx.fetchrow(_BIND, replica, author, ts)
            if bound is None:
                bound = await tx.fetchrow("SELECT owner FROM replicas WHERE replica_id = $1", replica)
            if bound is None or bound["owner"] != author:
                raise ReviewRefusal("foreign_replica", f"replica {replica[:40]!r} belongs to another user")
            continue
        bound = await tx.fetchrow("SELECT owner FROM replicas WHERE replica_id = $1", replica)
        owner = bound["owner"] if bound is not None else await bind_replica(tx, replica, author, ts)
        if owner != author:
            raise ReviewRefusal("foreign_replica", f"replica {replica[:40]!r} belongs to another user")
    return merged, signals


@dataclass(frozen=True, slots=True)
class _Signals:
    """The store's spam signals for a text (its ``body_hash``): another live review with it, and the
    author's reviews created in the hour before."""

    body_hash: str | None
    duplicate: bool
    posted: int


# Filled in with the parameters' places: the text's hash (NULL: too short to compare), the review,
# whether it is new (the posting rate counts only then), the author, an hour ago.
_SIGNALS = (
    "EXISTS (SELECT 1 FROM reviews WHERE body_hash = {hash} AND id <> {review}"
    " AND status IN ('published', 'pending', 'flagged')) AS duplicate,"
    " CASE WHEN {new} THEN (SELECT COUNT(*) FROM reviews"
    " WHERE author = {author} AND created_at > {since} AND id <> {review}) ELSE 0 END AS posted"
)
_INSERT = (
    "INSERT INTO reviews (id, product_id, author, region, state, version, status, created_at, updated_at)"
    " SELECT $1, $2, $3, $4, $5, 0, 'pending', $6, $6 WHERE EXISTS (SELECT 1 FROM products WHERE id = $2)"
    " ON CONFLICT DO NOTHING"
)
# PostgreSQL: the insert and the signals of the new review's text in one round trip (the signals'
# snapshot is the statement's: the new row is not in it, as "id <> $1" says anyway).
_INSERT_WITH_SIGNALS = (
    f"WITH inserted AS ({_INSERT} RETURNING 1) SELECT (SELECT COUNT(*) FROM inserted) AS inserted, "
    + _SIGNALS.format(hash="$7", review="$1", new="TRUE", author="$3", since="$8")
)


async def _insert_review(
    tx: Tx, review: Review, review_id: str, author: str, region: str, ts: int, dialect: str
) -> _Signals | None:
    """The row of a review its first push creates (its projection is written once judged); on
    PostgreSQL with the spam signals of its text as this push leaves it."""
    value = review.value()
    product_id = value.product if value is not None else None
    if product_id is None:
        raise ReviewRefusal("not_created", "a new review's first delta names its product (create)")
    signals = None
    if dialect == "postgres":
        body_hash = _body_hash(value.text if value is not None else None)
        row = await tx.fetchrow(
            _INSERT_WITH_SIGNALS, review_id, product_id, author, region, b"", ts, body_hash, ts - HOUR_US
        )
        assert row is not None
        inserted = int(row["inserted"])
        signals = _Signals(body_hash, bool(row["duplicate"]), int(row["posted"]))
    else:
        inserted = await tx.execute(_INSERT, review_id, product_id, author, region, b"", ts)
    if inserted != 1:
        if await tx.fetchrow("SELECT id FROM products WHERE id = $1", product_id) is None:
            raise ReviewRefusal("product_not_found", "no such product")
        taken = await tx.fetchrow("SELECT author FROM reviews WHERE id = $1", review_id)
        if taken is not None and taken["author"] == author:
            raise _CreatedMeanwhile(review_id)
        if taken is not None:
            raise ReviewRefusal("wrong_review", "that review id is taken")
        raise ReviewRefusal("review_exists", "this author already has a review of this product")
    return signals


def _product_of(review: Review) -> str:
    # (its value is None once deleted or erased: not computed whole for one field)
    if review.deleted or review.erased or review.product is None:
        raise ReviewRefusal("not_created", "a new review's first delta names its product (create)")
    return review.product


_BIND = (
    "WITH bound AS (INSERT INTO replicas (replica_id, owner, created_at) VALUES ($1, $2, $3)"
    " ON CONFLICT (replica_id) DO NOTHING RETURNING owner)"
    " SELECT owner FROM bound UNION ALL SELECT owner FROM replicas WHERE replica_id = $1"
)
# The same, one row (owner NULL: bound by a transaction the snapshot does not show), with a new
# review's spam signals: $4 its text's hash, $5 the review, $6 an hour ago ($2 the author).
_BIND_WITH_SIGNALS = (
    "WITH bound AS (INSERT INTO replicas (replica_id, owner, created_at) VALUES ($1, $2, $3)"
    " ON CONFLICT (replica_id) DO NOTHING RETURNING owner),"
    " found AS (SELECT owner FROM bound UNION ALL SELECT owner FROM replicas WHERE replica_id = $1)"
    " SELECT (SELECT owner FROM found LIMIT 1) AS owner, "
    + _SIGNALS.format(hash="$4", review="$5", new="TRUE", author="$2", since="$6")
)


class _CreatedMeanwhile(Exception):
    """The review a push would create was created by a concurrent transaction of the same author."""


async def _screen(
    tx: Tx,
    review: Review,
    review_id: str,
    before: ReviewDocument,
    screener: Screener,
    rules: ReviewRules,
    ts: int,
    signals: _Signals | None = None,
) -> tuple[ReviewStatus, tuple[str, ...]]:
    """The automatic judgment of new content: the screen's, then the store's own spam signals, which
    can only hold a review the screen would publish; and an edit of a review a person or the readers
    held back (flagged, rejected) waits for a person again."""
    value = review.value()
    assert value is not None
    screening: Screening = screener(value.text, value.rating, len(value.media))
    reasons = set(screening.reasons)
    verdict = screening.verdict
    if verdict is Verdict.PUBLISH:
        if value.rating is None:
            reasons.add("no_rating")
        if "posting_rate" in before.reasons:
            reasons.add("posting_rate")  # held for a person: a later clean edit does not lift it
        # The duplicate text and, for a new review, the author's posting rate: one statement, or
        # none if the review's insert read them for this text.
        body_hash = _body_hash(value.text)
        if signals is None or signals.body_hash != body_hash or before.version != 0:
            row = await tx.fetchrow(
                "SELECT " + _SIGNALS.format(hash="$1", review="$2", new="$3", author="$4", since="$5"),
                body_hash,
                review_id,
                before.version == 0,
                before.author,
                ts - HOUR_US,
            )
            assert row is not None
            signals = _Signals(body_hash, bool(row["duplicate"]), int(row["posted"]))
        if signals.duplicate:
            reasons.add("duplicate_text")
        if signals.posted >= rules.max_posts_per_hour:
            reasons.add("posting_rate")
        if before.status in (ReviewStatus.FLAGGED, ReviewStatus.REJECTED) and before.version > 0:
            reasons.add(f"previously_{before.status.value}")
        if reasons:
            verdict = Verdict.HOLD
    status = {
        Verdict.PUBLISH: ReviewStatus.PUBLISHED,
        Verdict.HOLD: ReviewStatus.PENDING,
        Verdict.REJECT: ReviewStatus.REJECTED,
    }[verdict]
    return status, tuple(sorted(reasons))
