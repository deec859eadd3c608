"""Review documents in SQL, read: one review, an author's live review of a product, a product's rating
aggregate and its recount, and listings with keyset cursors and full-text search (SQLite FTS5,
PostgreSQL GIN). :mod:`storage.sql_reviews` writes them; :mod:`storage.reviews` states the guarantees.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Protocol

from crdt import codec
from crdt.review import Review
from storage.db import Database, Row, Tx
from storage.reviews import RatingAggregate, ReviewDocument, ReviewPage, ReviewQuery, ReviewSort, ReviewStatus

_COLUMNS = (
    "id, product_id, author, region, version, status, reasons, mod_seq, rating, body, media, helpful,"
    " reports, created_at, updated_at"
)
_RATING_COLUMNS = (
    "rating_count, rating_total, rating_1, rating_2, rating_3, rating_4, rating_5, rating_version"
)
_MOVED_COLUMNS = ("rating_count", "rating_total", "rating_1", "rating_2", "rating_3", "rating_4", "rating_5")
# A product's aggregate: its row plus the rating moves not folded into it yet (storage.rating_folds),
# read in one statement, so one snapshot of both.
_WITH_MOVES = ", ".join(
    [f"CAST(p.{c} + COALESCE(m.{c}, 0) AS BIGINT) AS {c}" for c in _MOVED_COLUMNS]
    + ["CAST(p.rating_version + COALESCE(m.moves, 0) AS BIGINT) AS rating_version"]
)
_MOVES = (
    "SELECT product_id, COUNT(*) AS moves, "
    + ", ".join(f"SUM({c}) AS {c}" for c in _MOVED_COLUMNS)
    + " FROM rating_moves {where} GROUP BY product_id"
)
_WORD = re.compile(r"\w+")
_MAX_SEARCH_WORDS = 8


class _Reader(Protocol):
    db: Database


def search_words(q: str) -> list[str]:
    """The words a search looks for (every one must be in the text): letters and digits, at most 8."""
    return [w.lower() for w in _WORD.findall(q)][:_MAX_SEARCH_WORDS]


def _document(row: Row, *, with_state: bool) -> ReviewDocument:
    review = None
    if with_state:
        state = row["state"]
        review = codec.from_msgpack(bytes(state)) if state else Review.new()
    return ReviewDocument(
        id=row["id"],
        product_id=row["product_id"],
        author=row["author"],
        region=row["region"],
        review=review,
        version=row["version"],
        status=ReviewStatus(row["status"]),
        reasons=tuple(json.loads(row["reasons"])),
        rating=row["rating"] or None,
        text=row["body"],
        media=tuple(json.loads(row["media"])),
        helpful=row["helpful"],
        reports=row["reports"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        mod_seq=row["mod_seq"],
    )


def _aggregate(row: Row) -> RatingAggregate:
    return RatingAggregate(
        count=row["rating_count"],
        total=row["rating_total"],
        histogram=(row["rating_1"], row["rating_2"], row["rating_3"], row["rating_4"], row["rating_5"]),
    )


def render_aggregate(aggregate: RatingAggregate) -> dict[str, Any]:
    return {
        "count": aggregate.count,
        "average": aggregate.average,
        "histogram": {str(n + 1): aggregate.histogram[n] for n in range(5)},
    }


class ReviewReadSql:
    # -- reading -----------------------------------------------------------------------------------

    async def get_review(self: _Reader, review_id: str) -> ReviewDocument | None:
        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(f"SELECT {_COLUMNS}, state FROM reviews WHERE id = $1", review_id)

        row = await self.db.run(work, readonly=True, single_statement=True)
        return None if row is None else _document(row, with_state=True)

    async def live_review_of(self: _Reader, product_id: str, author: str) -> str | None:
        """The id of ``author``'s live (not deleted or erased) review of the product, if any."""

        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT id FROM reviews WHERE product_id = $1 AND author = $2"
                " AND status NOT IN ('deleted', 'erased')",
                product_id,
                author,
            )

        row = await self.db.run(work, readonly=True, single_statement=True)
        return None if row is None else str(row["id"])

    async def rating_of(self: _Reader, product_id: str) -> RatingAggregate | None:
        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                f"SELECT {_WITH_MOVES} FROM products p"
                f" LEFT JOIN ({_MOVES.format(where='WHERE product_id = $1')}) m ON m.product_id = p.id"
                " WHERE p.id = $1",
                product_id,
            )

        row = await self.db.run(work, readonly=True, single_statement=True)
        return None if row is None else _aggregate(row)

    async def recount_ratings(self: _Reader) -> dict[str, tuple[RatingAggregate, RatingAggregate]]:
        """Every product whose stored aggregate differs from a recount of its published reviews:
        product id → (stored, recounted). Empty when all agree (what the tests and operators check)."""

        async def work(tx: Tx) -> tuple[list[Row], list[Row]]:
            stored = await tx.fetch(
                f"SELECT p.id, {_WITH_MOVES} FROM products p"
                f" LEFT JOIN ({_MOVES.format(where='')}) m ON m.product_id = p.id"
            )
            counted = await tx.fetch(
                "SELECT product_id, rating, COUNT(*) AS n FROM reviews"
                " WHERE status = 'published' AND rating > 0 GROUP BY product_id, rating"
            )
            return stored, counted

        stored, counted = await self.db.run(work, readonly=True)
        histograms: dict[str, list[int]] = {}
        for row in counted:
            histograms.setdefault(row["product_id"], [0] * 5)[int(row["rating"]) - 1] += int(row["n"])
        mismatched = {}
        for row in stored:
            have = _aggregate(row)
            hist = histograms.get(row["id"], [0] * 5)
            h1, h2, h3, h4, h5 = hist
            want = RatingAggregate(sum(hist), h1 + 2 * h2 + 3 * h3 + 4 * h4 + 5 * h5, (h1, h2, h3, h4, h5))
            if have != want:
                mismatched[row["id"]] = (have, want)
        return mismatched

    async def list_reviews(self: _Reader, query: ReviewQuery) -> ReviewPage:
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        where: list[str] = []
        if query.product_id is not None:
            where.append(f"r.product_id = {arg(query.product_id)}")
        where.append("r.status IN (" + ", ".join(arg(s.value) for s in query.statuses) + ")")
        # SQLite, with no statistics, would walk the rating index and sort what it found when rating is
        # only a filter: "+" keeps the sort's own index.
        rating = (
            "+r.rating" if self.db.dialect == "sqlite" and query.sort is ReviewSort.NEWEST else "r.rating"
        )
        if query.min_rating is not None:
            where.append(f"{rating} >= {arg(query.min_rating)}")
        if query.max_rating is not None:
            where.append(f"{rating} <= {arg(query.max_rating)}")
        if query.with_media is not None:
            where.append(f"r.has_media = {arg(int(query.with_media))}")
        if query.author is not None:
            where.append(f"r.author = {arg(query.author)}")
        words = search_words(query.q) if query.q else []
        if query.q is not None and not words:
            return ReviewPage([], None)
        if words:
            if self.db.dialect == "postgres":
                where.append(
                    "to_tsvector('simple', coalesce(r.body, '')) @@ plainto_tsquery('simple', "
                    f"{arg(' '.join(words))})"
                )
            else:
                match = " ".join('"' + w.replace('"', "") + '"' for w in words)
                where.append(
                    f"r.id IN (SELECT review_id FROM review_search WHERE review_search MATCH {arg(match)})"
                )
        keys, order, after = _keyset(query)
        if query.after is not None:
            if len(query.after) != len(keys):
                raise ValueError("the cursor does not fit this listing's sort")
            where.append(after([arg(v) for v in query.after]))
        sql = (
            f"SELECT {', '.join('r.' + c.strip() for c in _COLUMNS.split(','))} FROM reviews r"
            f" WHERE {' AND '.join(where)} ORDER BY {order} LIMIT {arg(query.limit + 1)}"
        )

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(sql, *args)

        rows = await self.db.run(work, readonly=True, single_statement=True)
        items = [_document(row, with_state=False) for row in rows[: query.limit]]
        last = rows[query.limit - 1] if len(rows) > query.limit else None
        return ReviewPage(items, None if last is None else tuple(last[k] for k in keys))


def _keyset(query: ReviewQuery) -> tuple[list[str], str, Callable[[list[str]], str]]:
    """(the sort key's columns, ORDER BY, the condition "after this key") of a listing. Every order runs
    one way along an index (``lowest``: along ``-rating``), and the cursor is a row comparison, which
    the database turns into the index scan's start, not a filter over the rows skipped."""
    if query.oldest_first:
        return (
            ["updated_at", "id"],
            "r.updated_at ASC, r.id ASC",
            lambda a: f"(r.updated_at, r.id) > ({a[0]}, {a[1]})",
        )
    if query.sort is ReviewSort.NEWEST:
        return (
            ["created_at", "id"],
            "r.created_at DESC, r.id DESC",
            lambda a: f"(r.created_at, r.id) < ({a[0]}, {a[1]})",
        )
    if query.sort is ReviewSort.LOWEST:
        return (
            ["rating", "created_at", "id"],
            "-r.rating DESC, r.created_at DESC, r.id DESC",
            lambda a: f"(-r.rating, r.created_at, r.id) < (0 - {a[0]}, {a[1]}, {a[2]})",
        )
    column = "rating" if query.sort is ReviewSort.HIGHEST else "helpful"
    return (
        [column, "created_at", "id"],
        f"r.{column} DESC, r.created_at DESC, r.id DESC",
        lambda a: f"(r.{column}, r.created_at, r.id) < ({a[0]}, {a[1]}, {a[2]})",
    )


__all__ = ["ReviewReadSql", "render_aggregate", "search_words"]
