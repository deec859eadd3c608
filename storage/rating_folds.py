"""Folding a product's rating moves into its aggregate row (PostgreSQL).

Every change of a published review moves its product's aggregate. Done as an UPDATE of the product's
row inside the review's transaction, every review of a hot product waits for the one before it to
commit: the row's lock is held through the last round trip, the hub's event loop getting back to the
transaction, and the commit's WAL flush — ~200 posts/s on one product however many clients post
(bench/README.md, reviews). So on PostgreSQL the review's transaction appends its move to
``rating_moves`` (an INSERT: no row anyone else writes), and once it has committed the writer folds the
product's moves into the row with one statement that deletes them and adds their sums (``FOLD``) and
appends the ``rating.changed`` event — the same increments, never a total read into Python.

Exactness: a move is written in the transaction that changes the review, and the fold deletes moves and
adds them to the row in one statement, so the row plus the moves not folded yet (what
``rating_of`` and ``recount_ratings`` read, in one statement) is always the aggregate of the published
reviews. The row alone (what the catalog reads, its sorts and ``min_rating``) lags only until the fold:
a write returns after a fold that began after its commit, so a writer reads its own change in the
catalog too. A fold that fails (or a node stopping in between) leaves its moves in the table, counted
by every read, for the next fold of that product and region (or the hourly purge's).

One fold per product and region runs at a time in a process; the writes that commit while it runs
share the next one (:class:`KeyedRuns`), so a hot product has one fold in flight taking every move
committed meanwhile, and its row is locked by that single statement only, inside PostgreSQL.
``rating_version`` grows by the number of moves folded, so it still counts the aggregate's moves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

_SUMS = ", ".join(
    f"SUM({c})::BIGINT AS {c}"
    for c in ("rating_count", "rating_total", "rating_1", "rating_2", "rating_3", "rating_4", "rating_5")
)
_ADDS = ", ".join(
    f"{c} = products.{c} + s.{c}"
    for c in ("rating_count", "rating_total", "rating_1", "rating_2", "rating_3", "rating_4", "rating_5")
)

# $1 product, $2 region, $3 ts, $4 stream, $5 the event's dedupe key. One row if anything was folded
# into an existing product: the outbox entry (seq, payload) and the new aggregate; none otherwise.
FOLD = (
    "WITH moved AS (DELETE FROM rating_moves WHERE product_id = $1 AND region = $2"
    " RETURNING rating_count, rating_total, rating_1, rating_2, rating_3, rating_4, rating_5),"
    f" s AS (SELECT COUNT(*) AS n, {_SUMS} FROM moved),"
    f" agg AS (UPDATE products SET {_ADDS},"
    " rating_score = CASE WHEN products.rating_count + s.rating_count > 0"
    " THEN ((products.rating_total + s.rating_total) * 10000) / (products.rating_count + s.rating_count)"
    " ELSE 0 END, rating_version = products.rating_version + s.n"
    " FROM s WHERE products.id = $1 AND s.n > 0 RETURNING products.rating_count, products.rating_total,"
    " products.rating_1, products.rating_2, products.rating_3, products.rating_4, products.rating_5,"
    " products.rating_version),"
    " o AS (INSERT INTO outbox (product_id, warehouse_id, payload, created_at, stream, dedupe_key, version)"
    " SELECT '', '', json_build_object('type', 'rating.changed', 'product_id', $1::TEXT,"
    " 'rating', json_build_object('count', rating_count, 'average', CASE WHEN rating_count > 0"
    " THEN round(rating_total::NUMERIC / rating_count, 4) END, 'histogram', json_build_object("
    " '1', rating_1, '2', rating_2, '3', rating_3, '4', rating_4, '5', rating_5)),"
    " 'version', rating_version, 'ts', $3::BIGINT)::TEXT, $3, $4, $5, rating_version FROM agg"
    " RETURNING seq, payload) SELECT o.seq, o.payload, agg.* FROM o, agg"
)

# Every product and region with moves left (a fold that failed, a node that stopped before its fold).
LEFT = "SELECT DISTINCT product_id, region FROM rating_moves"


class KeyedRuns(Generic[K]):
    """Runs ``run(key)`` after each request for ``key``, at most one run per key at a time: the
    requests made while one runs share the next, which starts once it ends. A request's future is
    done (with None, or the exception its run raised) after a run that began after the request."""

    def __init__(self, run: Callable[[K], Awaitable[None]]) -> None:
        self._run = run
        self._waiting: dict[K, asyncio.Future[BaseException | None]] = {}
        self._workers: dict[K, asyncio.Task[None]] = {}

    def request(self, key: K) -> asyncio.Future[BaseException | None]:
        future = self._waiting.get(key)
        if future is None:
            future = self._waiting[key] = asyncio.get_running_loop().create_future()
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._serve(key), name="rating-fold")
        return future

    async def _serve(self, key: K) -> None:
        try:
            while (future := self._waiting.pop(key, None)) is not None:
                outcome: BaseException | None = None
                try:
                    await self._run(key)
                except Exception as exc:  # the waiters decide what a failed run means
                    outcome = exc
                except BaseException as exc:  # cancelled (the loop closing): no waiter hangs on it
                    future.set_result(exc)
                    raise
                if not future.done():
                    future.set_result(outcome)
        finally:
            del self._workers[key]
            left = self._waiting.pop(key, None)
            if left is not None:  # only after a cancellation: nothing runs for these any more
                left.set_result(RuntimeError("the runs of this key were stopped"))
