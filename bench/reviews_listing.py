"""Listing one product's reviews at 100,000 reviews, for ``python -m bench reviews``
(:mod:`bench.reviews` drives and reports).

A hub process on a fresh database (a throwaway PostgreSQL database, or an SQLite file), one product
made through the API; then ``--count`` published reviews of it written straight into the database —
``COPY`` on PostgreSQL (whose GIN index on ``to_tsvector('simple', body)`` indexes them as they come),
one transaction of multi-row inserts on SQLite with their rows in the FTS5 table ``review_search`` — and
the product's aggregate set to match. Ratings follow the J-shape of :data:`RATING_WEIGHTS`, creation
times spread over two years, 8% have media, 30% have helpful votes; texts are 8–30 words of a small
vocabulary, plus :data:`COMMON` in 40% of them and :data:`RARE` in 0.1% (the selective and unselective
searches). PostgreSQL then gets ``VACUUM ANALYZE reviews`` (what autovacuum does within a minute of
such a load; it also empties the GIN index's pending list); SQLite gets nothing (the hub never runs
``ANALYZE``).

Then each listing case is requested over real HTTP, one request at a time on one keep-alive connection,
the cases interleaved (round-robin, as a server sees mixed traffic, so that PostgreSQL's plan cache
sees every search word of a statement), after a few unmeasured rounds: p50/p99/max per case.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import secrets
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import orjson

from bench._hub import RUN_FAILURES, hub_process, throwaway_postgres_and_redis
from bench.reviews_posts import RATING_WEIGHTS, VOCABULARY, create_product, percentile

COMMON = "glowing"  # in 40% of the texts
RARE = "lavender"  # in 0.1%
TARGET_P99_MS = 20.0
_COLUMN_NAMES = (
    "id, product_id, author, region, state, version, status, reasons, mod_seq, rating, body, body_hash,"
    " media, has_media, helpful, reports, created_at, updated_at"
)
_COLUMNS = _COLUMN_NAMES.split(", ")
YEAR_US = 365 * 24 * 3600 * 1_000_000


def cases(deep: dict[int, str]) -> list[tuple[str, dict[str, str]]]:
    """(label, query) of each measured listing; ``deep``: depth → the cursor of the page there."""
    found = [
        ("newest", {}),
        ("highest", {"sort": "highest"}),
        ("lowest", {"sort": "lowest"}),
        ("helpful", {"sort": "helpful"}),
        ("min_rating=4", {"min_rating": "4"}),
        ("with_media=true", {"with_media": "true"}),
        (f"q={COMMON} (40%)", {"q": COMMON}),
        (f"q={RARE} (0.1%)", {"q": RARE}),
        (f"q={COMMON}&sort=highest", {"q": COMMON, "sort": "highest"}),
    ]
    for n, (depth, cursor) in enumerate(sorted(deep.items())):
        found.insert(1 + n, (f"newest, after {depth:,} (cursor)", {"cursor": cursor}))
    return found


def seed_rows(product: str, count: int, seed: int = 14) -> Iterator[tuple[Any, ...]]:
    """``count`` published reviews of ``product`` as rows of :data:`_COLUMNS`."""
    rng = random.Random(seed)
    now = time.time_ns() // 1000
    for n in range(count):
        rating = rng.choices(range(1, 6), RATING_WEIGHTS)[0]
        words = rng.choices(VOCABULARY, k=rng.randint(8, 30))
        if rng.random() < 0.4:
            words.insert(rng.randrange(len(words)), COMMON)
        if rng.random() < 0.001:
            words.insert(rng.randrange(len(words)), RARE)
        media = [str(uuid.UUID(int=rng.getrandbits(128), version=4))] if rng.random() < 0.08 else []
        helpful = int(rng.paretovariate(1.2)) if rng.random() < 0.3 else 0
        created = now - int(rng.random() * 2 * YEAR_US)
        review_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        body = " ".join(words).capitalize() + "."
        yield (
            review_id, product, f"seed-{n}", "eu", b"", 1, "published", "[]", 1, rating, body, None,
            orjson.dumps(media).decode(), int(bool(media)), helpful, 0, created, created,
        )  # fmt: skip


def aggregate_sql(rows: list[tuple[Any, ...]]) -> tuple[str, list[int]]:
    """The UPDATE that sets the product's aggregate to what ``rows`` hold ($1: the product)."""
    histogram = [0] * 5
    for row in rows:
        histogram[row[9] - 1] += 1
    count, total = len(rows), sum((n + 1) * h for n, h in enumerate(histogram))
    sql = (
        "UPDATE products SET rating_count = $2, rating_total = $3, rating_1 = $4, rating_2 = $5,"
        " rating_3 = $6, rating_4 = $7, rating_5 = $8, rating_score = $9, rating_version = 1 WHERE id = $1"
    )
    return sql, [count, total, *histogram, total * 10_000 // count if count else 0]


async def seed_postgres(url: str, product: str, count: int) -> None:
    import asyncpg

    rows = list(seed_rows(product, count))
    sql, values = aggregate_sql(rows)
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table("reviews", records=rows, columns=_COLUMNS)
        await conn.execute(sql, product, *values)
        await conn.execute("VACUUM ANALYZE reviews")
    finally:
        await conn.close()


def seed_sqlite(path: str, product: str, count: int) -> None:
    from storage.sql_reviews import _search_rowid

    rows = list(seed_rows(product, count))
    sql, values = aggregate_sql(rows)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(f"INSERT INTO reviews ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * 18)})", rows)
        conn.executemany(
            "INSERT INTO review_search (rowid, review_id, body) VALUES (?, ?, ?)",
            [(_search_rowid(row[0]), row[0], row[10]) for row in rows],
        )
        conn.execute(sql.replace("$", "?"), (product, *values))  # ?1 … ?9: numbered, as the $n were
        conn.execute("COMMIT")
    finally:
        conn.close()


@dataclass
class Case:
    label: str
    query: dict[str, str]
    items: int = 0  # on the first page answered
    latencies_ms: list[float] = field(default_factory=list)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    meets: bool = False  # p99 ≤ TARGET_P99_MS
    plan: list[str] = field(default_factory=list)  # its statement and plan, when it missed


@dataclass
class Listing:
    backend: str  # postgres | sqlite
    reviews: int
    requests: int
    deep: list[int]  # the deep pages start after this many reviews (newest first)
    seed_seconds: float = 0.0
    cases: list[Case] = field(default_factory=list)
    error: str | None = None


async def deep_cursors(session: aiohttp.ClientSession, url: str, depths: list[int]) -> dict[int, str]:
    """The cursor after the ``depth`` newest reviews, for each depth (a multiple of 100 within the
    listing), walked 100 at a time."""
    found: dict[int, str] = {}
    cursor: str | None = None
    for walked in range(100, max(depths, default=0) + 1, 100):
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        async with session.get(url, params=params) as response:
            cursor = (await response.json())["next_cursor"]
        if cursor is None:
            break
        if walked in depths:
            found[walked] = cursor
    return found


async def measure_cases(session: aiohttp.ClientSession, url: str, listing: Listing, warm: int) -> None:
    for n in range(warm + listing.requests):
        for case in listing.cases:
            started = time.perf_counter()
            async with session.get(url, params=case.query) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{case.label} answered {response.status}: {body[:300]!r}")
            elapsed = (time.perf_counter() - started) * 1000
            if n == 0:
                case.items = len(orjson.loads(body)["items"])
            if n >= warm:
                case.latencies_ms.append(elapsed)
    for case in listing.cases:
        case.p50_ms = percentile(case.latencies_ms, 0.5)
        case.p99_ms = percentile(case.latencies_ms, 0.99)
        case.max_ms = max(case.latencies_ms, default=0.0)
        case.meets = case.p99_ms <= TARGET_P99_MS


async def listing_sql(dialect: str, product: str, params: dict[str, str]) -> tuple[str, list[Any]]:
    """The SQL and arguments the store runs for a listing with ``params``: the store's own code, given
    a database that only records what it is asked."""
    from hub.routes.reviews import decode_cursor
    from storage.reviews import ReviewQuery, ReviewSort
    from storage.sql_reviews import ReviewSql

    sort = ReviewSort(params.get("sort", "newest"))
    cursor = params.get("cursor")
    query = ReviewQuery(
        product,
        min_rating=int(params["min_rating"]) if "min_rating" in params else None,
        with_media=params["with_media"] == "true" if "with_media" in params else None,
        q=params.get("q"),
        sort=sort,
        after=decode_cursor(cursor, sort.value, 2 if sort is ReviewSort.NEWEST else 3) if cursor else None,
    )
    asked: list[tuple[str, tuple[Any, ...]]] = []

    class Recorder:
        def __init__(self) -> None:
            self.dialect = dialect

        async def run(self, work: Callable[[Any], Awaitable[Any]], **_: Any) -> Any:
            return await work(self)

        async def fetch(self, sql: str, *args: Any) -> list[Any]:
            asked.append((sql, args))
            return []

    await ReviewSql.list_reviews(cast(Any, SimpleNamespace(db=Recorder())), query)
    sql, args = asked[0]
    return sql, list(args)


async def explain(backend: str, url: str, product: str, case: Case) -> list[str]:
    """The case's statement as the store sends it, and its plan: EXPLAIN (ANALYZE, BUFFERS) on
    PostgreSQL, EXPLAIN QUERY PLAN on SQLite."""
    sql, args = await listing_sql(backend, product, case.query)
    if backend == "sqlite":
        with contextlib.closing(sqlite3.connect(url)) as conn:
            numbered = re.sub(r"\$(\d+)", r"?\1", sql)
            rows = conn.execute("EXPLAIN QUERY PLAN " + numbered, args).fetchall()
        plan = [f"{row[3]}" for row in rows]
    else:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            plan = [str(row[0]) for row in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)]
        finally:
            await conn.close()
    return [f"-- {sql}", f"-- args: {args}", *plan]


async def run_listing(backend: str, args: Any, progress: Callable[[str], None]) -> Listing:
    listing = Listing(backend, args.reviews_count, args.reviews_requests, args.reviews_deep)
    secret = secrets.token_urlsafe(32)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if backend == "sqlite":
                folder = tempfile.mkdtemp(prefix="synchub-reviews-")
                stack.callback(shutil.rmtree, folder, True)
                url = str(Path(folder) / "hub.sqlite3")
            else:
                url, _ = await stack.enter_async_context(
                    throwaway_postgres_and_redis(args.postgres_admin_url, args.redis_url)
                )
            base, _pid = await stack.enter_async_context(hub_process(url, secret, "--region", "eu"))
            session = await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
            )
            product = await create_product(session, base, secret, "REVIEWS-BIG")
            progress(f"listing {backend}: seeding {listing.reviews:,} reviews")
            started = time.perf_counter()
            if backend == "sqlite":
                await asyncio.to_thread(seed_sqlite, url, product, listing.reviews)
            else:
                await seed_postgres(url, product, listing.reviews)
            listing.seed_seconds = time.perf_counter() - started
            reviews_url = f"{base}/api/v1/products/{product}/reviews"
            deep = await deep_cursors(session, reviews_url, listing.deep)
            listing.cases = [Case(label, query) for label, query in cases(deep)]
            progress(f"listing {backend}: {len(listing.cases)} cases × {listing.requests} requests")
            await measure_cases(session, reviews_url, listing, warm=5)
            for case in listing.cases:
                if not case.meets or args.reviews_explain_all:
                    case.plan = await explain(backend, url, product, case)
    except RUN_FAILURES as exc:
        progress(f"listing {backend}: failed — {exc!r}")
        listing.error = repr(exc)[:300]
    return listing
