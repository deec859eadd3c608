"""Behaviour events in, recommendations out: issue 16's speed targets, on a real hub process.

  ingest  ``POST /api/v1/events``, batches of ``--batch`` (50) events of ``--users`` shoppers who granted
          consent (sessions of views, adds to cart, wishes, searches and filters over a catalog of
          ``--products`` with a long tail), sent over ``--connections`` keep-alive connections for
          ``--seconds``: events stored per second, **events per hub CPU-second** (target ≥ 20,000: the hub
          process's user + system time from /proc), per hub + PostgreSQL CPU-second (the database's
          backends and writers, also from /proc), and each batch's latency. PostgreSQL, and SQLite too
          with ``--backends postgres,sqlite``.
  reads   the PostgreSQL database brought to ``--events`` (1,000,000) stored events through the store's
          own ingest (in this process, batches of 50 in concurrent transactions: the aggregates are
          built exactly as the hub builds them, not through HTTP), then ``GET /api/v1/me/recommendations``
          of shoppers with history: one at a time (p50, p99 — target ≤ 10 ms — and max), ``--connections``
          at once (reads/s, p99, hub CPU µs a read), and with a sustainability filter.

Every figure is measured, none assumed; both sections print the command that reproduces them. The hub
runs with ``--rate-limits=off`` (one address firing as fast as it can). Run:
``python -m bench events [--quick] [--sections ingest,reads] [--backends postgres,sqlite]``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from bench._hub import cpu_seconds, hub_process, throwaway_postgres_and_redis
from bench.http_client import HttpConnection, request_bytes
from bench.reviews_cpu import PostgresCpu, cpu_spent
from hub.auth import issue_token
from storage.behaviour import ConsentStatus, NewEvent
from storage.factory import open_store
from storage.models import NewProduct, Warehouse

MATERIALS = ("organic-cotton", "linen", "hemp", "recycled-polyester", "wool", "tencel", "recycled-denim")
CERTIFICATIONS = ("GOTS", "GRS", "OEKO-TEX", "Fair Trade", "RWS", "bluesign")
CATEGORIES = tuple(f"cat-{n:02d}" for n in range(20))
WAREHOUSES = (("par-1", "eu"), ("ber-1", "eu"), ("nyc-1", "us"))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


# -- the shop and its shoppers --------------------------------------------------------------------------


@dataclass
class Catalog:
    ids: list[str]
    by_category: dict[str, tuple[list[str], list[float]]]  # category → products, cumulative weights


async def seed_catalog(url: str, products: int, rng: random.Random) -> Catalog:
    """``products`` products (a long tail of popularity, a material and certifications each), stocked in
    every warehouse — but one in twenty out of stock in region eu."""
    store = open_store(url, region="eu")
    await store.open()
    try:
        await store.migrate()
        for wid, region in WAREHOUSES:
            await store.create_warehouse(Warehouse(wid, region, wid))
        by_category: dict[str, list[tuple[str, float]]] = {c: [] for c in CATEGORIES}
        ids = []
        for n in range(products):
            category = CATEGORIES[n % len(CATEGORIES)]
            attributes = {
                "material": rng.choice(MATERIALS),
                "certification": rng.sample(CERTIFICATIONS, rng.randint(0, 2)),
                "fit": rng.choice(("slim", "regular", "relaxed")),
            }
            product = await store.create_product(
                NewProduct(
                    sku=f"ECO-{n:06d}",
                    name=f"Product {n}",
                    price=Decimal(rng.randint(900, 12000)) / 100,
                    category=category,
                    attributes=attributes,
                )
            )
            ids.append(product.id)
            out_in_eu = n % 20 == 7
            for wid, region in WAREHOUSES:
                await store.set_stock(
                    product.id, wid, 0 if out_in_eu and region == "eu" else rng.randint(1, 40)
                )
            by_category[category].append((product.id, 1.0 / (len(by_category[category]) + 1) ** 0.9))
        cumulative = {}
        for category, weighted in by_category.items():
            total, running = 0.0, []
            for _, weight in weighted:
                total += weight
                running.append(total)
            cumulative[category] = ([p for p, _ in weighted], running)
        return Catalog(ids, cumulative)
    finally:
        await store.close()


def session(rng: random.Random, catalog: Catalog, size: int, start_us: int | None) -> list[NewEvent]:
    """One shopper's ``size`` events: mostly views in one or two favourite categories (popular products
    more often), some of the viewed carted or wished for, searches and filters; ``start_us`` None: now."""
    favourites = rng.sample(CATEGORIES, 2)
    viewed: list[str] = []
    events = []
    for n in range(size):
        ts = (start_us + n * 20_000_000) if start_us is not None else 0
        roll = rng.random()
        if roll < 0.70 or not viewed:
            category = favourites[0] if rng.random() < 0.7 else rng.choice((favourites[1], *CATEGORIES))
            products, weights = catalog.by_category[category]
            product = rng.choices(products, cum_weights=weights)[0]
            viewed.append(product)
            events.append(NewEvent("view", ts, "eu", product_id=product))
        elif roll < 0.80:
            events.append(NewEvent("add_to_cart", ts, "eu", product_id=rng.choice(viewed)))
        elif roll < 0.86:
            events.append(NewEvent("wishlist", ts, "eu", product_id=rng.choice(viewed)))
        elif roll < 0.93:
            events.append(
                NewEvent("search", ts, "eu", query=f"{rng.choice(MATERIALS)} {rng.choice(('tee', 'dress'))}")
            )
        else:
            events.append(NewEvent("filter", ts, "eu", attributes={"material": [rng.choice(MATERIALS)]}))
    return events


def wire(event: NewEvent) -> dict[str, Any]:
    body: dict[str, Any] = {"type": event.type, "consent": "granted"}
    if event.product_id is not None:
        body["product_id"] = event.product_id
    if event.query is not None:
        body["query"] = event.query
    if event.attributes is not None:
        body["attributes"] = event.attributes
    return body


async def grant(url: str, users: Sequence[str]) -> None:
    store = open_store(url, region="eu")
    await store.open()
    try:
        for sub in users:
            await store.set_consent(sub, ConsentStatus.GRANTED)
    finally:
        await store.close()


# -- ingest ----------------------------------------------------------------------------------------------


@dataclass
class IngestRow:
    backend: str
    events: int
    seconds: float
    hub_cpu: float
    db_cpu: float | None
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def per_second(self) -> float:
        return self.events / self.seconds

    @property
    def per_hub_cpu(self) -> float:
        return self.events / self.hub_cpu if self.hub_cpu else 0.0


async def ingest(
    backend: str, url: str, args: argparse.Namespace, secret: str, catalog: Catalog, rng: random.Random
) -> IngestRow:
    users = [f"shopper-{n}" for n in range(args.users)]
    await grant(url, users)
    tokens = {sub: issue_token(secret, sub, ["customer"], 24 * 3600) for sub in users}
    bodies = []
    for _ in range(args.distinct_batches):
        sub = rng.choice(users)
        events = session(rng, catalog, args.batch, None)
        payload = orjson.dumps({"events": [wire(e) for e in events]})
        bodies.append((tokens[sub], payload))
    async with hub_process(url, secret) as (base, pid):
        host, port = base.removeprefix("http://").split(":")
        requests = [
            request_bytes(
                "POST",
                "/api/v1/events",
                f"{host}:{port}",
                {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
                payload,
            )
            for bearer, payload in bodies
        ]
        conns = [await HttpConnection.open(host, int(port)) for _ in range(args.connections)]
        # warm up: every connection's first requests, the hub's prepared statements and caches
        await asyncio.gather(*(conn.send(requests[i]) for i, conn in enumerate(conns)))
        latencies: list[float] = []
        errors = 0
        sent = 0
        stop = time.monotonic() + args.seconds

        async def lane(conn: HttpConnection, offset: int) -> None:
            nonlocal errors, sent
            i = offset
            while time.monotonic() < stop:
                began = time.perf_counter()
                response = await conn.send(requests[i % len(requests)])
                latencies.append(time.perf_counter() - began)
                if response.status != 200:
                    errors += 1
                    if errors == 1:
                        print(
                            f"  (a batch answered {response.status}: {response.body[:200]!r})",
                            file=sys.stderr,
                        )
                else:
                    sent += 1
                i += len(conns)

        database = PostgresCpu(url) if backend == "postgres" else None
        if database is not None:
            await database.__aenter__()
        try:
            db_before = await database.sample() if database is not None else {}
            cpu_before = cpu_seconds(pid)
            started = time.monotonic()
            await asyncio.gather(*(lane(conn, n) for n, conn in enumerate(conns)))
            seconds = time.monotonic() - started
            hub_cpu = cpu_seconds(pid) - cpu_before
            db_cpu = cpu_spent(db_before, await database.sample()) if database is not None else None
        finally:
            for conn in conns:
                conn.close()
            if database is not None:
                await database.__aexit__(None, None, None)
    return IngestRow(
        backend,
        sent * args.batch,
        seconds,
        hub_cpu,
        db_cpu,
        percentile(latencies, 0.50) * 1e3,
        percentile(latencies, 0.99) * 1e3,
        errors,
    )


# -- reads at a million events --------------------------------------------------------------------------


async def fill(
    url: str, catalog: Catalog, target: int, batch: int, rng: random.Random
) -> tuple[int, float, list[str]]:
    """Bring the stored events to ``target`` through the store's ingest; (events added, seconds, the
    shoppers given history)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        stored = int(await conn.fetchval("SELECT COUNT(*) FROM behaviour_events"))
    finally:
        await conn.close()
    missing = max(0, target - stored)
    # Readers need histories of their own even when the ingest section already stored the target (a
    # fast ingest run of --quick does): at least 400 sessions, ~100 readers.
    batches = max(missing // batch, 400)
    shoppers = [f"reader-{n}" for n in range(max(1, batches // 4))]  # ~4 sessions each
    await grant(url, shoppers)
    store = open_store(url, region="eu")
    await store.open()
    now = time.time_ns() // 1000
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(batches):
        queue.put_nowait(n)

    async def worker() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            sub = shoppers[n % len(shoppers)]
            start = now - rng.randint(0, 30 * 86_400) * 1_000_000 - batch * 20_000_000
            await store.ingest_events(sub, session(rng, catalog, batch, start), 90 * 86_400 * 1_000_000)
            if n and n % 2000 == 0:
                print(f"  … {n * batch:,} events", file=sys.stderr, flush=True)

    started = time.monotonic()
    try:
        await asyncio.gather(*(worker() for _ in range(8)))
    finally:
        await store.close()
    return batches * batch, time.monotonic() - started, shoppers


async def table_sizes(url: str) -> list[tuple[str, int, int]]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE")
        out = []
        for table in ("behaviour_events", "co_viewed", "co_carted", "user_preferences", "trending"):
            rows = int(await conn.fetchval(f"SELECT COUNT(*) FROM {table}"))
            size = int(await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table))
            out.append((table, rows, size))
        return out
    finally:
        await conn.close()


@dataclass
class ReadRow:
    case: str
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    rate: float | None = None
    cpu_us: float | None = None


async def reads(
    base: str, pid: int, secret: str, shoppers: list[str], args: argparse.Namespace
) -> list[ReadRow]:
    host, port = base.removeprefix("http://").split(":")
    rng = random.Random(7)

    def request(query: str = "") -> bytes:
        sub = rng.choice(shoppers)
        bearer = issue_token(secret, sub, ["customer"], 24 * 3600)
        return request_bytes(
            "GET",
            f"/api/v1/me/recommendations{query}",
            f"{host}:{port}",
            {"Authorization": f"Bearer {bearer}"},
        )

    rows = []
    for case, query in (
        ("one at a time", ""),
        ("one at a time, attr.material=organic-cotton", "?attr.material=organic-cotton"),
    ):
        prepared = [request(query) for _ in range(args.reads + 200)]
        conn = await HttpConnection.open(host, int(port))
        took = []
        empty = 0
        try:
            for i, raw in enumerate(prepared):
                began = time.perf_counter()
                response = await conn.send(raw)
                if i >= 200:  # (the first 200 warm the hub's caches and statements)
                    took.append(time.perf_counter() - began)
                if response.status != 200:
                    raise RuntimeError(f"a read answered {response.status}: {response.body[:200]!r}")
                if i >= 200 and not orjson.loads(response.body)["items"]:
                    empty += 1
        finally:
            conn.close()
        if empty > len(took) // 2:
            raise RuntimeError(f"{empty} of {len(took)} lists were empty: the bench reads nothing")
        rows.append(
            ReadRow(
                case, len(took), percentile(took, 0.5) * 1e3, percentile(took, 0.99) * 1e3, max(took) * 1e3
            )
        )
    prepared = [request() for _ in range(4000)]
    conns = [await HttpConnection.open(host, int(port)) for _ in range(args.connections)]
    took = []
    stop = time.monotonic() + args.seconds

    async def lane(conn: HttpConnection, offset: int) -> None:
        i = offset
        while time.monotonic() < stop:
            began = time.perf_counter()
            response = await conn.send(prepared[i % len(prepared)])
            took.append(time.perf_counter() - began)
            if response.status != 200:
                raise RuntimeError(f"a read answered {response.status}")
            i += len(conns)

    cpu = cpu_seconds(pid)
    started = time.monotonic()
    try:
        await asyncio.gather(*(lane(conn, n) for n, conn in enumerate(conns)))
    finally:
        for conn in conns:
            conn.close()
    seconds = time.monotonic() - started
    rows.append(
        ReadRow(
            f"{args.connections} connections",
            len(took),
            percentile(took, 0.5) * 1e3,
            percentile(took, 0.99) * 1e3,
            max(took) * 1e3,
            len(took) / seconds,
            (cpu_seconds(pid) - cpu) / len(took) * 1e6,
        )
    )
    return rows


async def store_reads(url: str, shoppers: list[str], count: int) -> ReadRow:
    """The store's read alone (``recommendation_signals``: on PostgreSQL one call of migration 12's
    function), in this process, one at a time: the database's part of a read, and asyncpg's."""
    store = open_store(url, region="eu")
    await store.open()
    rng = random.Random(11)
    took = []
    try:
        for i in range(count + 200):
            began = time.perf_counter()
            await store.recommendation_signals(rng.choice(shoppers), "eu")
            if i >= 200:
                took.append(time.perf_counter() - began)
    finally:
        await store.close()
    return ReadRow(
        "the store's read alone (in process)",
        len(took),
        percentile(took, 0.5) * 1e3,
        percentile(took, 0.99) * 1e3,
        max(took) * 1e3,
    )


def load() -> str:
    return ", ".join(f"{n:.2f}" for n in os.getloadavg())


# -- the run ---------------------------------------------------------------------------------------------


def command(args: argparse.Namespace) -> str:
    parts = ["python -m bench events"]
    if args.quick:
        parts.append("--quick")
    parts.append(f"--sections {','.join(args.sections)}")
    if "ingest" in args.sections:
        parts.append(f"--backends {','.join(args.backends)}")
    return " ".join(parts)


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    secret = secrets.token_urlsafe(32)
    print(f"\n# Behaviour events and recommendations\n\n`{command(args)}`\n")
    print(f"(load average at the start: {load()}; the machine's other work shows in every figure)\n")
    async with throwaway_postgres_and_redis(args.postgres_admin_url, args.redis_url) as (pg_url, _):
        catalog = await seed_catalog(pg_url, args.products, rng)
        if "ingest" in args.sections:
            rows = []
            for backend in args.backends:
                if backend == "postgres":
                    rows.append(await ingest("postgres", pg_url, args, secret, catalog, rng))
                else:
                    with tempfile.TemporaryDirectory(prefix="synchub-bench-events-") as folder:
                        path = str(Path(folder) / "hub.sqlite3")
                        sqlite_catalog = await seed_catalog(path, args.products, random.Random(args.seed))
                        rows.append(await ingest("sqlite", path, args, secret, sqlite_catalog, rng))
            print(
                f"## Ingest: POST /api/v1/events, batches of {args.batch}, {args.connections} connections,"
                f" {args.seconds:g} s, {args.users:,} shoppers, {args.products:,} products\n"
            )
            print(
                "| store | events stored | events/s | hub CPU s | **events / hub CPU s** | database CPU s"
                " | events / (hub + database) CPU s | batch p50 ms | batch p99 ms | errors |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|")
            for r in rows:
                db = f"{r.db_cpu:.2f}" if r.db_cpu is not None else "(in the hub)"
                both = f"{r.events / (r.hub_cpu + r.db_cpu):,.0f}" if r.db_cpu else "—"
                cells = [r.backend, f"{r.events:,}", f"{r.per_second:,.0f}", f"{r.hub_cpu:.2f}"]
                cells += [
                    f"**{r.per_hub_cpu:,.0f}**",
                    db,
                    both,
                    f"{r.p50_ms:.1f}",
                    f"{r.p99_ms:.1f}",
                    str(r.errors),
                ]
                print("| " + " | ".join(cells) + " |")
            target = 20_000
            for r in rows:
                verdict = (
                    "met" if r.per_hub_cpu >= target else f"NOT met ({r.per_hub_cpu / target:.0%} of it)"
                )
                print(f"\n- {r.backend}: {r.per_hub_cpu:,.0f} events per hub CPU-second;", end="")
                print(f" target {target:,}: {verdict}")
            if any(r.errors for r in rows):
                return 1
        if "reads" in args.sections:
            added, seconds, shoppers = await fill(pg_url, catalog, args.events, args.batch, rng)
            sizes = await table_sizes(pg_url)
            stored = sizes[0][1]
            print(
                f"\n## Recommendations at {stored:,} stored events (PostgreSQL)\n\n{added:,} events added"
                f" through the store's ingest in {seconds:.0f} s ({added / max(seconds, 1e-9):,.0f}/s, 8"
                f" concurrent batches, in this process), {len(shoppers):,} shoppers, sessions over 30 days.\n"
            )
            print("| table | rows | size MB |")
            print("|---|---|---|")
            for table, count, size in sizes:
                print(f"| {table} | {count:,} | {size / 1e6:,.1f} |")
            async with hub_process(pg_url, secret) as (base, pid):
                read_rows = await reads(base, pid, secret, shoppers, args)
            read_rows.append(await store_reads(pg_url, shoppers, args.reads))
            print(
                "\n| GET /api/v1/me/recommendations | reads | p50 ms | **p99 ms** | max ms | reads/s"
                " | hub CPU µs/read |"
            )
            print("|---|---|---|---|---|---|---|")
            for read in read_rows:
                rate = f"{read.rate:,.0f}" if read.rate is not None else "—"
                cpu = f"{read.cpu_us:,.0f}" if read.cpu_us is not None else "—"
                cells = [read.case, f"{read.count:,}", f"{read.p50_ms:.2f}", f"**{read.p99_ms:.2f}**"]
                cells.append(f"{read.max_ms:.1f}")
                print("| " + " | ".join([*cells, rate, cpu]) + " |")
            print(f"\n(load average at the end: {load()})")
            p99 = read_rows[0].p99_ms
            verdict = "met" if p99 <= 10 else f"NOT met ({p99 / 10:.1f}× the target)"
            print(f"\n- read p99 one at a time: {p99:.2f} ms at {stored:,} events; target ≤ 10 ms: {verdict}")
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench events",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 2 s of ingest, 20,000 stored events"
    )
    parser.add_argument("--sections", default="ingest,reads", help="ingest, reads (comma-separated)")
    parser.add_argument("--backends", default="postgres", help="ingest on postgres, sqlite (comma-separated)")
    parser.add_argument("--batch", type=int, default=50, help="events a batch (≤ 100)")
    parser.add_argument("--users", type=int, default=2000, help="shoppers sending batches")
    parser.add_argument("--products", type=int, default=2000, help="products in the catalog")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="how long the ingest and the concurrent reads last"
    )
    parser.add_argument(
        "--distinct-batches", type=int, default=4000, help="different batches sent round robin"
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="stored events the reads run at")
    parser.add_argument("--reads", type=int, default=3000, help="reads one at a time")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    args.backends = [b for b in args.backends.split(",") if b]
    if not set(args.sections) <= {"ingest", "reads"} or not set(args.backends) <= {"postgres", "sqlite"}:
        parser.error("--sections: ingest, reads; --backends: postgres, sqlite")
    if not 1 <= args.batch <= 100:
        parser.error("--batch: 1 to 100")
    if args.quick:
        args.seconds, args.users, args.products, args.distinct_batches = 2.0, 200, 300, 200
        args.events, args.reads = 20_000, 300
    try:
        import uvloop

        return uvloop.run(run(args))
    except ImportError:  # pragma: no cover
        return asyncio.run(run(args))


if __name__ == "__main__":  # python -m bench.events is python -m bench events
    import sys

    sys.exit(main(sys.argv[1:]))
