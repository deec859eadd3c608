"""Review documents in SQL: merge pushed deltas into a review, judge it and move its product's rating
aggregate, in one transaction with its mutation ids and outbox entries; moderators' decisions, helpful
votes and reports; listings with keyset cursors and full-text search (see :mod:`storage.reviews` for
the guarantees).

The review's row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite has one writer), so two nodes
writing one review serialise there; a review one push creates is inserted by PostgreSQL's last
statement, judged, its id and its author's one live review of the product guarded by the unique
indexes. What a write checks and reads before it writes is :mod:`storage.sql_review_checks`. Its
projection — status, rating, text, media, the columns listings sort and search by — is rewritten
from the merged state in that transaction. The product's aggregate
moves by the difference between the review's old and new contribution (counted only while
``published``), as increments: on SQLite (one writer) on the product's row; on PostgreSQL appended to
``rating_moves`` and folded into the row after commit (:mod:`storage.rating_folds`: concurrent changes
of one product's reviews do not wait for each other). No total is ever read into Python and written
back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import replace
from typing import Any, Protocol, TypeVar

import orjson

from crdt import codec
from crdt.review import ModerationStatus, Review
from storage.carts import PushOutcome, PushStatus
from storage.db import Database, Tx
from storage.errors import NotFound, VersionMismatch
from storage.pg_statement_batches import StatementBatcher
from storage.rating_folds import FOLD, LEFT, KeyedRuns
from storage.reviews import (
    ReviewDocument,
    ReviewPush,
    ReviewPushResult,
    ReviewRefusal,
    ReviewRules,
    ReviewStatus,
    Screener,
)
from storage.sql_core import collecting
from storage.sql_review_checks import (
    _SIGNALS,
    HOUR_US,
    _body_hash,
    _checked_merge,
    _CreatedMeanwhile,
    _insert_review,
    _make_delta,
    _product_of,
    _screen,
    _Signals,
)
from storage.sql_review_reads import (
    _COLUMNS,
    _RATING_COLUMNS,
    ReviewReadSql,
    _aggregate,
    _document,
    render_aggregate,
    search_words,
)
from storage.streams import reviews_stream, user_stream

T = TypeVar("T")
log = logging.getLogger(__name__)

# The (product, region) pairs whose rating moves the writing transaction running in this task appended
# (PostgreSQL): folded once it has committed. A context variable, as storage.sql_core's _APPENDED.
_MOVED: ContextVar[set[tuple[str, str]] | None] = ContextVar("synchub_rating_moved", default=None)

_LOCKED = {
    "sqlite": f"SELECT {_COLUMNS}, state FROM reviews WHERE id = $1",
    "postgres": f"SELECT {_COLUMNS}, state FROM reviews WHERE id = $1 FOR UPDATE",
}
_FINAL = (ReviewStatus.DELETED, ReviewStatus.ERASED)


class _Core(Protocol):
    db: Database
    region: str

    async def _write(
        self, work: Callable[[Tx], Awaitable[T]], *, single_statement: bool = False, grouped: bool = False
    ) -> T: ...
    async def append_event(
        self, tx: Tx, stream: str, key: str, version: int, payload: dict[str, Any], ts: int
    ) -> None: ...
    async def user_event(
        self, tx: Tx, sub: str, payload: dict[str, Any], ts: int, *, region: str | None = None
    ) -> None: ...
    def _appended(self, seq: int, stream: str, key: str, version: int, payload: bytes) -> None: ...
    async def _write_moving(
        self, work: Callable[[Tx], Awaitable[T]], *, single_statement: bool = False, grouped: bool = False
    ) -> T: ...
    async def _fold_rating(self, key: tuple[str, str]) -> None: ...


def _now_us() -> int:
    return time.time_ns() // 1000


def _search_rowid(review_id: str) -> int:
    """The review's row in SQLite's search index: a signed 64-bit hash of its id."""
    return int.from_bytes(hashlib.blake2b(review_id.encode(), digest_size=8).digest(), "big", signed=True)


def _state(document: ReviewDocument) -> Review:
    assert document.review is not None, "read with its state"
    return document.review


def public_review(document: ReviewDocument) -> dict[str, Any]:
    """A review as anyone may read it (only published ones are; media as ids)."""
    return {
        "id": document.id,
        "product_id": document.product_id,
        "author": document.author,
        "rating": document.rating,
        "text": document.text,
        "media": list(document.media),
        "helpful": document.helpful,
        "version": document.version,
        "created_at": document.created_at,
        "updated_at": document.updated_at,
    }


class ReviewSql(ReviewReadSql):
    # -- writing -----------------------------------------------------------------------------------

    async def push_review(
        self: _Core,
        review_id: str,
        author: str,
        pushes: Sequence[ReviewPush],
        rules: ReviewRules,
        screener: Screener,
    ) -> ReviewPushResult:
        """Merge each push in order (the first may create the review: its delta names it), then judge
        the review once and move the aggregate, in one transaction."""

        async def work(tx: Tx, deferred: bool) -> ReviewPushResult:
            try:
                return await attempt(tx, looked_up=False, deferred=deferred)
            except _CreatedMeanwhile:
                # Another transaction created this review (the same author's retry through another
                # node) and has committed: it is read, locked, this time.
                return await attempt(tx, looked_up=True, deferred=False)

        # One push on PostgreSQL: a refusal rolls the whole transaction back (which takes back the
        # replicas its delta bound) instead of costing every push a savepoint's two round trips. And
        # a review it creates is inserted once, judged, by the transaction's last statement (not
        # inserted pending and then rewritten with its 11 indexes); if that insert finds the id or
        # the author's live review of the product taken, the push runs again the long way, which
        # says what it found.
        whole = len(pushes) == 1 and self.db.dialect == "postgres"

        async def attempt(tx: Tx, *, looked_up: bool, deferred: bool) -> ReviewPushResult:
            ts = _now_us()
            fresh = whole and pushes[0].new and not looked_up  # (see ReviewPush.new)
            # (see _write_judged's ``alone``: the replica the one statement binds)
            unbound: list[str] | None = [] if fresh and deferred else None
            row = None if fresh else await tx.fetchrow(_LOCKED[self.db.dialect], review_id)
            if row is not None and row["author"] != author:
                raise NotFound("no such review", resource="review")
            before = None if row is None else _document(row, with_state=True)
            insert_last = whole and deferred and before is None
            review = Review.new() if before is None else _state(before)
            version = 0 if before is None else before.version
            outcomes: list[PushOutcome] = []
            applied: dict[str, int] = {}
            created = False
            signals: _Signals | None = None
            for push in pushes:
                seen = applied.get(push.mutation_id)
                if seen is None and before is not None:
                    found = await tx.fetchrow(
                        "SELECT version FROM review_mutations WHERE review_id = $1 AND mutation_id = $2",
                        review_id,
                        push.mutation_id,
                    )
                    seen = None if found is None else int(found["version"])
                if seen is not None:
                    outcomes.append(PushOutcome(push.mutation_id, PushStatus.DUPLICATE, seen))
                    continue
                try:
                    # (a savepoint: a refusal takes back the replicas the delta bound before it)
                    async with contextlib.nullcontext() if whole else tx.savepoint():
                        delta = _make_delta(push, review)
                        merged, early = await _checked_merge(
                            tx,
                            review,
                            delta,
                            review_id,
                            author,
                            rules,
                            ts,
                            self.db.dialect,
                            signals_of=review_id if insert_last and not created else None,
                            unbound=unbound,
                        )
                        signals = early or signals
                        if before is None and not created and insert_last:
                            _product_of(merged)
                            created = True
                        elif before is None and not created:
                            signals = await _insert_review(
                                tx, merged, review_id, author, self.region, ts, self.db.dialect
                            )
                            created = True
                except ReviewRefusal as refusal:
                    refused = PushOutcome(
                        push.mutation_id, PushStatus.REFUSED, version, refusal.code, refusal.message
                    )
                    if whole:
                        raise _Refused(ReviewPushResult(before, [refused])) from refusal
                    outcomes.append(refused)
                    continue
                if merged != review:
                    review = merged
                    version += 1
                applied[push.mutation_id] = version
                outcomes.append(PushOutcome(push.mutation_id, PushStatus.APPLIED, version))
            if not applied:
                return ReviewPushResult(before, outcomes)
            if before is not None and version == before.version:
                # Nothing new merged (a delta the review held already): no judgment, no event.
                await _record_mutations(tx, review_id, list(applied.items()), ts)
                return ReviewPushResult(before, outcomes)
            alone = None
            if unbound is not None:
                if len(unbound) != 1:
                    raise _Taken(review_id)  # (not a REST creation's delta: the long way binds them)
                # Judged as if the store's signals were clean; the statement writes only if they are.
                value = review.value()
                body_hash = _body_hash(value.text if value is not None else None)
                signals = _Signals(body_hash, duplicate=False, posted=0)
                alone = (unbound[0], ts - HOUR_US, rules.max_posts_per_hour)
            document = await ReviewSql._settle(
                self,
                tx,
                review_id,
                review,
                version,
                before,
                screener,
                rules,
                ts,
                list(applied.items()),
                signals,
                insert_row=insert_last,
                alone=alone,
            )
            return ReviewPushResult(document, outcomes)

        for deferred in (True, False):
            # A REST creation's first try is one row of a statement shared with the concurrent
            # creations, one round trip and one commit for all (_CREATED, a group commit: no BEGIN,
            # no COMMIT, no connection of its own): judged as if the store's spam signals were clean,
            # it binds the author's REST replica and writes the review, its events and its rating
            # move only if they are, the replica is the author's and the review's id and product are
            # free — or writes nothing but the binding (_Taken: then the long way, in a transaction,
            # judges what it finds). The binding is the one any of the author's REST writes makes
            # (the replica's id is minted for them by the hub), harmless if the review then is not
            # created.
            alone = deferred and whole and pushes[0].new
            try:
                return await self._write_moving(
                    lambda tx: work(tx, deferred),  # noqa: B023 (awaited here)
                    single_statement=alone,
                    grouped=alone,  # (the statement goes with concurrent creations': _write_judged)
                )
            except _Refused as refused:
                return refused.result
            except _Taken:
                continue
        raise AssertionError("the long way inserts first: it never raises _Taken")

    async def moderate_review(
        self: _Core,
        review_id: str,
        status: ReviewStatus,
        reasons: Sequence[str],
        expected_version: int | None = None,
    ) -> ReviewDocument:
        """A moderator's decision (published, rejected or flagged) on the review as it is now, written by
        the server in the review's own moderation sequence. With ``expected_version`` (the version the
        moderator read) it is conditional: VersionMismatch if the author changed the review since, so
        that no decision covers content its moderator did not see. NotFound if no such review,
        ReviewRefusal(review_gone) once deleted or erased."""

        async def work(tx: Tx) -> ReviewDocument:
            ts = _now_us()
            row = await tx.fetchrow(_LOCKED[self.db.dialect], review_id)
            if row is None:
                raise NotFound("no such review", resource="review")
            before = _document(row, with_state=True)
            if expected_version is not None and before.version != expected_version:
                raise VersionMismatch("the review changed since it was read", current_version=before.version)
            if status is ReviewStatus.PUBLISHED and before.reports and before.status not in _FINAL:
                # A person has looked at the reports: they are settled, and new ones count anew.
                await tx.execute("DELETE FROM review_reports WHERE review_id = $1", review_id)
                await tx.execute("UPDATE reviews SET reports = 0 WHERE id = $1", review_id)
                before = replace(before, reports=0)
            return await ReviewSql._judge(
                self, tx, before, _state(before), before.version + 1, status, tuple(reasons), ts
            )

        return await self._write_moving(work)

    async def report_review(
        self: _Core, review_id: str, reporter: str, reason: str, rules: ReviewRules
    ) -> tuple[ReviewDocument, bool]:
        """Record ``reporter``'s report (once per user); the ``reports_to_flag``-th flags a published
        review. Returns the review and whether this report was new."""

        async def work(tx: Tx) -> tuple[ReviewDocument, bool]:
            ts = _now_us()
            row = await tx.fetchrow(_LOCKED[self.db.dialect], review_id)
            if row is None or row["status"] != ReviewStatus.PUBLISHED.value:
                raise NotFound("no such review", resource="review")
            if row["author"] == reporter:
                raise ReviewRefusal("own_review", "authors cannot report their own review")
            before = _document(row, with_state=True)
            added = await tx.execute(
                "INSERT INTO review_reports (review_id, reporter, reason, created_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (review_id, reporter) DO NOTHING",
                review_id,
                reporter,
                reason,
                ts,
            )
            if added != 1:
                return before, False
            counted = await tx.fetchrow(
                "UPDATE reviews SET reports = reports + 1 WHERE id = $1 RETURNING reports", review_id
            )
            assert counted is not None
            if counted["reports"] >= rules.reports_to_flag:
                flagged = await ReviewSql._judge(
                    self,
                    tx,
                    replace(before, reports=int(counted["reports"])),
                    _state(before),
                    before.version + 1,
                    ReviewStatus.FLAGGED,
                    ("reported",),
                    ts,
                )
                return flagged, True
            return replace(before, reports=int(counted["reports"])), True

        return await self._write_moving(work)

    async def vote_helpful(self: _Core, review_id: str, voter: str) -> tuple[int, bool]:
        """One helpful vote per user per published review, not the author's own: (the review's count,
        whether this vote was new). NotFound for an unpublished review; ReviewRefusal(own_review)."""

        async def work(tx: Tx) -> tuple[int, bool]:
            row = await tx.fetchrow("SELECT author, status, helpful FROM reviews WHERE id = $1", review_id)
            if row is None or row["status"] != ReviewStatus.PUBLISHED.value:
                raise NotFound("no such review", resource="review")
            if row["author"] == voter:
                raise ReviewRefusal("own_review", "authors cannot vote for their own review")
            added = await tx.execute(
                "INSERT INTO review_votes (review_id, voter, created_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (review_id, voter) DO NOTHING",
                review_id,
                voter,
                _now_us(),
            )
            if added != 1:
                return int(row["helpful"]), False
            counted = await tx.fetchrow(
                "UPDATE reviews SET helpful = helpful + 1 WHERE id = $1 RETURNING helpful", review_id
            )
            assert counted is not None
            return int(counted["helpful"]), True

        return await self._write(work)

    async def purge_review_mutations(self: _Core, older_than_us: int) -> int:
        """Forget push ids older than ``older_than_us``; and fold the rating moves any fold left (a
        failed one, a node stopped between a commit and its fold: they count meanwhile, see
        storage.rating_folds)."""

        async def work(tx: Tx) -> int:
            return await tx.execute("DELETE FROM review_mutations WHERE created_at < $1", older_than_us)

        async def left(tx: Tx) -> list[tuple[str, str]]:
            return [(r["product_id"], r["region"]) for r in await tx.fetch(LEFT)]

        purged = await self._write(work, single_statement=True)
        if self.db.dialect == "postgres":
            for key in await self.db.run(left, readonly=True, single_statement=True):
                await self._fold_rating(key)
        return purged

    # -- the aggregate's moves, folded after commit (PostgreSQL: storage.rating_folds) ---------------

    async def _write_moving(
        self: _Core,
        work: Callable[[Tx], Awaitable[T]],
        *,
        single_statement: bool = False,
        grouped: bool = False,
    ) -> T:
        """``_write(work, single_statement=..., grouped=...)``, then the fold of the rating moves it
        appended: it returns once a fold that began after its commit has taken them (or failed: they
        stay counted, for the next)."""
        moved: set[tuple[str, str]] = set()
        tracked = collecting(_MOVED, moved, work)
        result = await self._write(tracked, single_statement=single_statement, grouped=grouped)
        if moved:
            folds: KeyedRuns[tuple[str, str]] | None = getattr(self, "_rating_folds", None)
            if folds is None:
                folds = KeyedRuns(lambda key: self._fold_rating(key))
                setattr(self, "_rating_folds", folds)  # noqa: B010 (a mixin: no __init__ of its own)
            for key in sorted(moved):
                # (shielded: a caller that goes away does not cancel the fold others wait for)
                failure = await asyncio.shield(folds.request(key))
                if failure is not None:
                    log.warning("rating fold of %s failed (its moves stay counted): %r", key, failure)
        return result

    async def _fold_rating(self: _Core, key: tuple[str, str]) -> None:
        product_id, region = key
        stream, dedupe = reviews_stream(region), f"rating:{product_id}"

        async def work(tx: Tx) -> None:
            row = await tx.fetchrow(FOLD, product_id, region, _now_us(), stream, dedupe)
            if row is not None:
                self._appended(row["seq"], stream, dedupe, row["rating_version"], row["payload"].encode())

        await self._write(work, single_statement=True)

    # -- the judgment and its consequences ---------------------------------------------------------

    async def _settle(
        self: _Core,
        tx: Tx,
        review_id: str,
        review: Review,
        version: int,
        before: ReviewDocument | None,
        screener: Screener,
        rules: ReviewRules,
        ts: int,
        mutations: Sequence[tuple[str, int]],
        signals: _Signals | None = None,
        *,
        insert_row: bool = False,
        alone: tuple[str, int, int] | None = None,
    ) -> ReviewDocument:
        """After a push: judge the merged review (unless nothing new needs judging) and write it, with
        the ids of the pushes applied. ``signals``: the spam signals read with the review's insert
        (``alone``: assumed, see _write_judged)."""
        base = before or _new_document(review_id, review, self.region, ts)
        reasons: tuple[str, ...]
        if review.erased:
            status, reasons = ReviewStatus.ERASED, ()
        elif review.deleted:
            status, reasons = ReviewStatus.DELETED, ()
        elif review.moderation is not None and review.moderation.judged.includes(review.context):
            status, reasons = base.status, base.reasons  # nothing new to judge
        else:
            status, reasons = await _screen(tx, review, review_id, base, screener, rules, ts, signals)
        return await ReviewSql._judge(
            self,
            tx,
            base,
            review,
            version,
            status,
            reasons,
            ts,
            after_push=True,
            mutations=mutations,
            insert_row=insert_row,
            alone=alone,
        )

    async def _judge(
        self: _Core,
        tx: Tx,
        before: ReviewDocument,
        review: Review,
        version: int,
        status: ReviewStatus,
        reasons: tuple[str, ...],
        ts: int,
        *,
        after_push: bool = False,
        mutations: Sequence[tuple[str, int]] = (),
        insert_row: bool = False,
        alone: tuple[str, int, int] | None = None,
    ) -> ReviewDocument:
        """Write ``review`` judged ``status``: the server's moderation record (for a judgeable status),
        the projection, the aggregate's move, the events and the ids of the ``mutations`` applied
        (id, version). ``version`` is the review's new version. Only a push changes a deleted or
        erased review (its edits merge, never shown)."""
        if before.status in _FINAL and not after_push:
            raise ReviewRefusal("review_gone", f"the review is {before.status.value}")
        mod_seq = before.mod_seq
        if status not in _FINAL:
            mod_seq += 1
            review = review.merge(review.moderate(mod_seq, ModerationStatus(status.value)))
        value = review.value()
        rating = value.rating if value is not None and value.rating is not None else 0
        text = value.text if value is not None else None
        media = list(value.media) if value is not None else []
        projection = (
            before.id,
            codec.to_msgpack(review),
            version,
            status.value,
            json.dumps(list(reasons)),
            mod_seq,
            rating,
            text,
            _body_hash(text) if status not in _FINAL else None,
            json.dumps(media),
            int(bool(media)),
            ts,
        )
        after = ReviewDocument(
            id=before.id,
            product_id=before.product_id,
            author=before.author,
            region=before.region,
            review=review,
            version=version,
            status=status,
            reasons=reasons,
            rating=rating or None,
            text=text,
            media=tuple(media),
            helpful=before.helpful,
            reports=before.reports,
            created_at=before.created_at,
            updated_at=ts,
            mod_seq=mod_seq,
        )
        public = _public_event(before, after, ts)
        told = _status_event(after)
        move = _move(before, after)
        if self.db.dialect == "postgres":
            await ReviewSql._write_judged(
                self, tx, after, projection, public, told, move, mutations, ts, insert_row, alone
            )
            return after
        await _record_mutations(tx, before.id, mutations, ts)
        await tx.execute(_PROJECT, *projection)
        rowid = _search_rowid(before.id)
        await tx.execute("DELETE FROM review_search WHERE rowid = $1", rowid)
        if text and status not in _FINAL:
            await tx.execute(
                "INSERT INTO review_search (rowid, review_id, body) VALUES ($1, $2, $3)",
                rowid,
                before.id,
                text,
            )
        if public is not None:
            stream = reviews_stream(after.region)
            await self.append_event(tx, stream, f"review:{after.id}", after.version, public, ts)
        await self.user_event(tx, after.author, told, ts, region=after.region)
        if move is not None:
            await ReviewSql._move_row(self, tx, after, move, ts)
        return after

    async def _write_judged(
        self: _Core,
        tx: Tx,
        after: ReviewDocument,
        projection: tuple[Any, ...],
        public: dict[str, Any] | None,
        told: dict[str, Any],
        move: tuple[int, ...] | None,
        mutations: Sequence[tuple[str, int]],
        ts: int,
        insert_row: bool,
        alone: tuple[str, int, int] | None = None,
    ) -> None:
        """PostgreSQL: everything a judgment writes in one statement (``_JUDGED``), one round trip.
        The rating's move is appended (storage.rating_folds), not applied to the product's row.
        ``insert_row``: the review is new and inserted here; _Taken if its id or its author's live
        review of the product is there already (then nothing was written). ``alone`` (with
        ``insert_row``; the replica, an hour ago, the posting limit): the statement also binds the
        replica and writes the review only if the replica is its author's, no other live review has
        its text and its author has posted fewer than the limit in the hour (the spam signals the
        judgment assumed clean); else _Taken, nothing written but the binding. That write is grouped
        (SqlCore._write): its parameters go as one row of ``_CREATED``, with concurrent creations'."""
        stream = reviews_stream(after.region)
        public_payload = None if public is None else orjson.dumps(public)
        private_stream = user_stream(after.region, after.author)
        parameters = (
            *projection,
            None if public_payload is None else public_payload.decode(),
            stream,
            f"review:{after.id}",
            after.author,
            # the user's event, its version (the user's counter) appended by the statement
            orjson.dumps({**told, "sub": after.author, "ts": ts}).decode(),
            private_stream,
            f"user:{after.author}",
            after.product_id,
            after.region,
            *(move or (0,) * 7),
            move is not None,
        )
        if alone is not None:
            ((mutation_id, mutation_version),) = mutations  # (a REST creation is one push)
            replica, since, limit = alone
            row = await _creations(self).submit(
                (*parameters, mutation_id, mutation_version, replica, since, limit),
                # What one creation's statement reads or locks that another's may write: the
                # author's rows (replica, event counter, live review of a product, posting rate),
                # the review's id, and the live reviews with its text.
                frozenset(
                    (("author", after.author), ("review", after.id), ("replica", replica))
                    + ((("text", projection[8]),) if projection[8] is not None else ())
                ),
            )
        else:
            row = await tx.fetchrow(
                _JUDGED_NEW if insert_row else _JUDGED,
                *parameters,
                [m for m, _ in mutations],
                [v for _, v in mutations],
            )
        if row is None and insert_row:
            raise _Taken(after.id)
        assert row is not None, "the review's row is locked by this transaction"
        if public_payload is not None:
            self._appended(row["public_seq"], stream, f"review:{after.id}", after.version, public_payload)
        self._appended(
            row["seq"], private_stream, f"user:{after.author}", row["version"], row["payload"].encode()
        )
        if move is not None:
            moved = _MOVED.get()
            assert moved is not None, "a write that moves a rating runs in _write_moving"
            moved.add((after.product_id, after.region))

    async def _move_row(self: _Core, tx: Tx, after: ReviewDocument, move: tuple[int, ...], ts: int) -> None:
        """SQLite (one writer): the move applied to the product's row, with its event."""
        count, total, *histogram = move
        moves = ", ".join(f"rating_{n + 1} = rating_{n + 1} + {m}" for n, m in enumerate(histogram) if m)
        row = await tx.fetchrow(
            "UPDATE products SET rating_count = rating_count + $2, rating_total = rating_total + $3,"
            f" {moves},"
            " rating_score = CASE WHEN rating_count + $2 > 0"
            " THEN ((rating_total + $3) * 10000) / (rating_count + $2) ELSE 0 END,"
            f" rating_version = rating_version + 1 WHERE id = $1 RETURNING {_RATING_COLUMNS}",
            after.product_id,
            count,
            total,
        )
        if row is None:  # the product was deleted meanwhile: its reviews go with it
            return
        await self.append_event(
            tx,
            reviews_stream(after.region),
            f"rating:{after.product_id}",
            int(row["rating_version"]),
            {
                "type": "rating.changed",
                "product_id": after.product_id,
                "rating": render_aggregate(_aggregate(row)),
                "version": int(row["rating_version"]),
                "ts": ts,
            },
            ts,
        )


_PROJECT = (
    "UPDATE reviews SET state = $2, version = $3, status = $4, reasons = $5, mod_seq = $6,"
    " rating = $7, body = $8, body_hash = $9, media = $10, has_media = $11, updated_at = $12"
    " WHERE id = $1"
)
_OUTBOX = "INSERT INTO outbox (product_id, warehouse_id, payload, created_at, stream, dedupe_key, version)"
# $1–$12 the projection (_PROJECT); $13 the public event (NULL: none), $14 its stream, $15 its key;
# $16 the author, $17 their event without its version, $18 its stream, $19 its key; $20 product,
# $21 region, $22–$28 the rating's move (count, total, ratings 1–5), $29 whether there is one;
# $30, $31 the mutation ids and versions recorded. Everything but the projection is written only if
# the projection wrote the review's row (_JUDGED_NEW's insert may find it taken).
_JUDGE_WRITES = (
    " mutations AS (INSERT INTO review_mutations (review_id, mutation_id, version, created_at)"
    " SELECT $1, m.id, m.version, $12 FROM unnest($30::TEXT[], $31::BIGINT[]) AS m(id, version)"
    " WHERE EXISTS (SELECT 1 FROM projection)),"
    f" public AS ({_OUTBOX} SELECT '', '', $13, $12, $14, $15, $3"
    " WHERE $13::TEXT IS NOT NULL AND EXISTS (SELECT 1 FROM projection) RETURNING seq),"
    " counter AS (INSERT INTO user_events (sub, version)"
    " SELECT $16, 1 WHERE EXISTS (SELECT 1 FROM projection)"
    " ON CONFLICT (sub) DO UPDATE SET version = user_events.version + 1 RETURNING version),"
    f" private AS ({_OUTBOX} SELECT '', '',"
    " left($17, -1) || ',\"version\":' || counter.version::TEXT || '}',"
    " $12, $18, $19, counter.version FROM counter RETURNING seq, version, payload),"
    " moved AS (INSERT INTO rating_moves (product_id, region, rating_count, rating_total, rating_1,"
    " rating_2, rating_3, rating_4, rating_5, created_at)"
    " SELECT $20, $21, $22, $23, $24, $25, $26, $27, $28, $12 WHERE $29::BOOLEAN"
    " AND EXISTS (SELECT 1 FROM projection))"
    " SELECT (SELECT seq FROM public) AS public_seq, private.seq, private.version, private.payload"
    " FROM private"
)
_JUDGED = f"WITH projection AS ({_PROJECT} RETURNING id),{_JUDGE_WRITES}"
# A new review's row, inserted judged (and only if its product is there, its id free and its author
# has no live review of the product: ON CONFLICT covers both unique indexes).
_JUDGED_NEW = (
    "WITH projection AS (INSERT INTO reviews (id, product_id, author, region, state, version, status,"
    " reasons, mod_seq, rating, body, body_hash, media, has_media, created_at, updated_at)"
    " SELECT $1, $20, $16, $21, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12"
    " WHERE EXISTS (SELECT 1 FROM products WHERE id = $20) ON CONFLICT DO NOTHING RETURNING id),"
    f"{_JUDGE_WRITES}"
)
# The parameters of a REST creation, in order: _JUDGED_NEW's, but $30, $31 the one mutation id and
# version, then the replica ($32), an hour ago ($33) and the posting limit ($34).
_CREATION = (
    ("id", "TEXT"), ("state", "BYTEA"), ("version", "BIGINT"), ("status", "TEXT"), ("reasons", "TEXT"),
    ("mod_seq", "BIGINT"), ("rating", "INTEGER"), ("body", "TEXT"), ("body_hash", "TEXT"),
    ("media", "TEXT"), ("has_media", "INTEGER"), ("ts", "BIGINT"), ("public_payload", "TEXT"),
    ("public_stream", "TEXT"), ("public_key", "TEXT"), ("author", "TEXT"), ("private_payload", "TEXT"),
    ("private_stream", "TEXT"), ("private_key", "TEXT"), ("product_id", "TEXT"), ("region", "TEXT"),
    ("move_count", "BIGINT"), ("move_total", "BIGINT"), ("move_1", "BIGINT"), ("move_2", "BIGINT"),
    ("move_3", "BIGINT"), ("move_4", "BIGINT"), ("move_5", "BIGINT"), ("moves", "BOOLEAN"),
    ("mutation_id", "TEXT"), ("mutation_version", "BIGINT"), ("replica", "TEXT"), ("since", "BIGINT"),
    ("max_posts", "BIGINT"),
)  # fmt: skip


def _creation_column(place: int, name: str, kind: str) -> str:
    # (bytes travel as base64: storage.pg_statement_batches)
    if kind == "BYTEA":
        return f"decode(r->>{place}, 'base64') AS {name}"
    return f"r->>{place} AS {name}" if kind == "TEXT" else f"(r->>{place})::{kind} AS {name}"


# REST creations, many in one statement (storage.pg_statement_batches: $1 is the array of the
# creations' rows, each the JSON array of its _CREATION parameters), binding each one's replica first and
# writing a review only if the replica is its author's and the spam signals are clean (_SIGNALS: no
# other live review with the text's hash, fewer than max_posts reviews by the author since ``since``):
# what a judgment that assumed them clean may write. The batch holds no two creations by one author,
# of one id or with one text (their keys), so none of them reads or locks what another writes: each is
# written as if alone. A row for each review written (n: its creation's place in the batch).
_CREATED = (
    "WITH i AS (SELECT "
    + ", ".join(_creation_column(place, name, kind) for place, (name, kind) in enumerate(_CREATION))
    + ", e.n FROM unnest($1::JSONB[]) WITH ORDINALITY AS e(r, n)),"
    " bound AS (INSERT INTO replicas (replica_id, owner, created_at) SELECT replica, author, ts FROM i"
    " ON CONFLICT (replica_id) DO NOTHING RETURNING replica_id, owner),"
    " projection AS (INSERT INTO reviews (id, product_id, author, region, state, version, status,"
    " reasons, mod_seq, rating, body, body_hash, media, has_media, created_at, updated_at)"
    " SELECT i.id, i.product_id, i.author, i.region, i.state, i.version, i.status, i.reasons, i.mod_seq,"
    " i.rating, i.body, i.body_hash, i.media, i.has_media, i.ts, i.ts"
    " FROM i CROSS JOIN LATERAL (SELECT "
    + _SIGNALS.format(hash="i.body_hash", review="i.id", new="TRUE", author="i.author", since="i.since")
    + ") AS signals"
    " WHERE EXISTS (SELECT 1 FROM products WHERE products.id = i.product_id)"
    " AND (EXISTS (SELECT 1 FROM bound WHERE bound.replica_id = i.replica AND bound.owner = i.author)"
    " OR EXISTS (SELECT 1 FROM replicas WHERE replicas.replica_id = i.replica"
    " AND replicas.owner = i.author))"
    " AND NOT signals.duplicate AND signals.posted < i.max_posts"
    " ON CONFLICT DO NOTHING RETURNING id),"
    " w AS (SELECT i.* FROM i JOIN projection ON projection.id = i.id),"
    " mutations AS (INSERT INTO review_mutations (review_id, mutation_id, version, created_at)"
    " SELECT id, mutation_id, mutation_version, ts FROM w),"
    f" shown AS ({_OUTBOX} SELECT '', '', public_payload, ts, public_stream, public_key, version FROM w"
    " WHERE public_payload IS NOT NULL RETURNING seq, dedupe_key),"
    " counter AS (INSERT INTO user_events (sub, version) SELECT author, 1 FROM w ORDER BY author"
    " ON CONFLICT (sub) DO UPDATE SET version = user_events.version + 1 RETURNING sub, version),"
    f" told AS ({_OUTBOX} SELECT '', '',"
    " left(w.private_payload, -1) || ',\"version\":' || counter.version::TEXT || '}',"
    " w.ts, w.private_stream, w.private_key, counter.version FROM w JOIN counter ON counter.sub = w.author"
    " RETURNING seq, version, payload, dedupe_key),"
    " moved AS (INSERT INTO rating_moves (product_id, region, rating_count, rating_total, rating_1,"
    " rating_2, rating_3, rating_4, rating_5, created_at)"
    " SELECT product_id, region, move_count, move_total, move_1, move_2, move_3, move_4, move_5, ts"
    " FROM w WHERE moves)"
    " SELECT w.n, shown.seq AS public_seq, told.seq, told.version, told.payload"
    " FROM w JOIN told ON told.dedupe_key = w.private_key"
    " LEFT JOIN shown ON shown.dedupe_key = w.public_key"
)


def _creations(store: _Core) -> StatementBatcher:
    """The store's group commit of REST creations (made on first use: a mixin has no __init__)."""
    batcher: StatementBatcher | None = getattr(store, "_review_creations", None)
    if batcher is None:
        db = store.db
        batcher = StatementBatcher(lambda work: db.run(work, single_statement=True), _CREATED)
        setattr(store, "_review_creations", batcher)  # noqa: B010
    return batcher


def _public_event(before: ReviewDocument, after: ReviewDocument, ts: int) -> dict[str, Any] | None:
    """The event of the review's public stream, if anyone may see the change (published content only)."""
    was_public = before.status is ReviewStatus.PUBLISHED and before.version > 0
    is_public = after.status is ReviewStatus.PUBLISHED
    if is_public:
        kind = "review.changed" if was_public else "review.published"
    elif was_public:
        kind = "review.removed"
    else:
        return None
    payload: dict[str, Any] = {"type": kind, "product_id": after.product_id, "ts": ts}
    if is_public:
        payload["review"] = public_review(after)
    else:
        payload["review"] = {"id": after.id, "product_id": after.product_id, "version": after.version}
    return payload


def _status_event(after: ReviewDocument) -> dict[str, Any]:
    """The author's event of every judgment (``user:{sub}``)."""
    return {
        "type": "review.status",
        "review_id": after.id,
        "product_id": after.product_id,
        "status": after.status.value,
        "reasons": list(after.reasons),
        "review_version": after.version,
    }


def _move(before: ReviewDocument, after: ReviewDocument) -> tuple[int, ...] | None:
    """The change of the product's aggregate (count, total, ratings 1–5), None if nothing moves: a
    review counts while published, by its rating."""
    was = before.rating if before.status is ReviewStatus.PUBLISHED and before.version > 0 else None
    now = after.rating if after.status is ReviewStatus.PUBLISHED else None
    if was == now:
        return None
    histogram = [0] * 5
    if was is not None:
        histogram[was - 1] -= 1
    if now is not None:
        histogram[now - 1] += 1
    return ((now is not None) - (was is not None), (now or 0) - (was or 0), *histogram)


async def _record_mutations(tx: Tx, review_id: str, mutations: Sequence[tuple[str, int]], ts: int) -> None:
    for mutation_id, version in mutations:
        await tx.execute(
            "INSERT INTO review_mutations (review_id, mutation_id, version, created_at)"
            " VALUES ($1, $2, $3, $4)",
            review_id,
            mutation_id,
            version,
            ts,
        )


class _Taken(Exception):
    """A new review's insert, its transaction's last statement, found its id or its author's live
    review of the product there: nothing was written, and the push runs again the long way."""


class _Refused(Exception):
    """A single push refused on PostgreSQL: its transaction is rolled back, and this is its result."""

    def __init__(self, result: ReviewPushResult) -> None:
        super().__init__("refused")
        self.result = result


def _new_document(review_id: str, review: Review, region: str, ts: int) -> ReviewDocument:
    """The row :func:`_insert_review` wrote, as it stands before its first judgment."""
    value = review.value()
    assert value is not None and value.product is not None and value.author is not None
    return ReviewDocument(
        id=review_id,
        product_id=value.product,
        author=value.author,
        region=region,
        review=Review.new(),
        version=0,
        status=ReviewStatus.PENDING,
        reasons=(),
        rating=None,
        text=None,
        media=(),
        helpful=0,
        reports=0,
        created_at=ts,
        updated_at=ts,
    )


__all__ = ["ReviewSql", "public_review", "render_aggregate", "search_words"]
