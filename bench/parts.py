"""``python -m bench parts``: school parts requests (issue 16, seed 003) on PostgreSQL — parts requests per
second, and the catalog's fitment-filter listing at 100,000 products.

One hub process (``synchub serve``, one worker) on a throwaway PostgreSQL database. ``--products``
products are written straight into the database (``COPY``) with realistic fitment attributes —
``{"fitment": {"make", "model", "year": [three model years]}}``, 12 makes of very unequal share (Ford
20%, a rare make 0.1%), 6 models each, years 2005-2024, 24 categories — and stock at two warehouses of
region ``eu``; then ``VACUUM ANALYZE`` (what autovacuum does soon after such a load).

**Listing**: each case of :func:`cases` over real HTTP, one request at a time on one keep-alive
connection, interleaved, ``--listing-requests`` rounds after a few unmeasured ones: p50/p99/max, the
page's size, and whether PostgreSQL's plan of the store's own statement
(``storage.sql_catalog.product_listing``, ``EXPLAIN ANALYZE``) reads the GIN index
``products_attributes``.

**Requests**: ``--schools`` schools, each with its platform's API key and a bus; ``--clients`` clients
post parts requests back to back (a new Idempotency-Key each), for ``--seconds``: lines by SKU and by
fitment query, quantities 1-3, from a pool of well-stocked products (reserved at once) — the requests
answered per second, latency p50/p99, and the hub's CPU seconds per request. Then the **scarce** case:
the same clients on ``--scarce-skus`` products with no stock (every request backordered), then one
stock adjustment per product that fills every queue: how long that adjustment took and how many
backorders it filled.

Run: ``python -m bench parts [--quick] [--products 100000] [--seconds 10] [--clients 32]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench._hub import admin_headers, cpu_seconds, hub_process, throwaway_postgres_and_redis
from bench.reviews_cpu import PostgresCpu, cpu_spent, waits_share
from bench.reviews_posts import percentile

MAKES = [  # (make, share of the catalog in ‰)
    ("Ford", 200), ("Chevrolet", 180), ("International", 150), ("Freightliner", 120), ("Blue Bird", 100),
    ("Thomas", 80), ("Toyota", 60), ("Honda", 50), ("Toro", 30), ("John Deere", 20), ("Kubota", 9),
    ("Tesla", 1),
]  # fmt: skip
CATEGORIES = [f"cat-{n:02d}" for n in range(23)] + ["brakes"]
STOCKED = 2000  # the products the throughput requests draw from (well stocked)


def seed_rows(count: int, seed: int = 16) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    makes = [make for make, share in MAKES for _ in range(share)]
    now = time.time_ns() // 1000
    rows = []
    for n in range(count):
        make = rng.choice(makes)
        first = rng.randint(2005, 2022)
        fitment = {
            "make": make,
            "model": f"{make[:3].upper()}-{rng.randint(1, 6)}",
            "year": [first, first + 1, first + 2],
        }
        created = now - (count - n) * 1000
        rows.append(
            (str(uuid.UUID(int=rng.getrandbits(128), version=4)), f"P-{n:06d}", f"part {n}", "",
             rng.choice(CATEGORIES), rng.randint(100, 100_000) * 100, "active",
             json.dumps({"fitment": fitment, "oem": rng.random() < 0.3}), 5, created, created)
        )  # fmt: skip
    return rows


_COLUMNS = [
    "id", "sku", "name", "description", "category", "price_units", "status", "attributes",
    "low_stock_threshold", "created_at", "updated_at",
]  # fmt: skip


def cases() -> list[tuple[str, dict[str, str]]]:
    return [
        ("make=Ford (20%)", {"attr.fitment.make": "Ford"}),
        ("make=Ford&year=2019 (~3%)", {"attr.fitment.make": "Ford", "attr.fitment.year": "2019"}),
        (
            "make=Ford&model=FOR-3&year=2019 (~0.5%)",
            {"attr.fitment.make": "Ford", "attr.fitment.model": "FOR-3", "attr.fitment.year": "2019"},
        ),
        ("make=Tesla (0.1%)", {"attr.fitment.make": "Tesla"}),
        (
            "category=brakes&make=Ford&year=2019",
            {"category": "brakes", "attr.fitment.make": "Ford", "attr.fitment.year": "2019"},
        ),
        ("make=Nobody (none)", {"attr.fitment.make": "Nobody"}),
    ]


@dataclass
class Case:
    label: str
    query: dict[str, str]
    items: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    uses_index: bool = False
    plan: list[str] = field(default_factory=list)


async def seed(url: str, count: int) -> list[tuple[Any, ...]]:
    import asyncpg

    rows = seed_rows(count)
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table("products", records=rows, columns=_COLUMNS)
        now = time.time_ns() // 1000
        stock = [(r[0], w, 1000, 0, 1, now) for r in rows[:STOCKED] for w in ("w1", "w2")]
        await conn.copy_records_to_table(
            "stock",
            records=stock,
            columns=["product_id", "warehouse_id", "on_hand", "reserved", "version", "updated_at"],
        )
        await conn.execute("VACUUM ANALYZE products")
        await conn.execute("VACUUM ANALYZE stock")
    finally:
        await conn.close()
    return rows


async def explain(url: str, case: Case) -> None:
    import asyncpg

    from storage.attributes import AttributeFilter
    from storage.models import ProductQuery
    from storage.sql_catalog import CatalogSql

    class Dialect:
        dialect = "postgres"

    attributes = tuple(
        AttributeFilter(tuple(k.removeprefix("attr.").split(".")), v)
        for k, v in case.query.items()
        if k.startswith("attr.")
    )
    query = ProductQuery(limit=50, category=case.query.get("category"), attributes=attributes)
    holder: Any = type("Listing", (), {"db": Dialect()})()
    sql, args = CatalogSql.product_listing(holder, query)
    conn = await asyncpg.connect(url)
    try:
        plan = [str(r[0]) for r in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)]
    finally:
        await conn.close()
    case.plan = plan
    case.uses_index = any("products_attributes" in line for line in plan)


async def measure_listing(session: aiohttp.ClientSession, base: str, found: list[Case], rounds: int) -> None:
    for n in range(5 + rounds):
        for case in found:
            started = time.perf_counter()
            async with session.get(base + "/api/v1/products", params={"limit": "50", **case.query}) as r:
                body = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"{case.label}: {r.status} {body}")
            if n == 0:
                case.items = len(body["items"])
            if n >= 5:
                case.latencies_ms.append((time.perf_counter() - started) * 1000)


@dataclass
class School:
    id: str
    key: str
    asset: str


async def make_schools(
    session: aiohttp.ClientSession, base: str, admin: dict[str, str], count: int
) -> list[School]:
    schools = []
    for n in range(count):
        async with session.post(
            base + "/api/v1/api-keys",
            headers=admin,
            json={"name": f"s{n}", "scopes": ["parts-requests:write"]},
        ) as r:
            key = await r.json()
        school_id = f"school-{n}"
        async with session.post(
            base + "/api/v1/schools",
            headers=admin,
            json={"id": school_id, "name": school_id, "region": "eu", "api_keys": [key["id"]]},
        ) as r:
            if r.status != 201:
                raise RuntimeError(f"school: {r.status} {await r.text()}")
        async with session.post(
            f"{base}/api/v1/schools/{school_id}/assets",
            headers={"Authorization": f"Bearer {key['key']}"},
            json={"asset_tag": "BUS-1", "kind": "vehicle", "make": "Ford", "model": "FOR-3", "year": 2019},
        ) as r:
            asset = await r.json()
        schools.append(School(school_id, key["key"], asset["id"]))
    return schools


@dataclass
class Throughput:
    label: str
    answered: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    db_cpu_seconds: float = 0.0
    db_waits: dict[str, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)


async def post_requests(
    session: aiohttp.ClientSession,
    base: str,
    schools: list[School],
    lines: Any,
    clients: int,
    seconds: float,
    pid: int,
    label: str,
    database_url: str,
) -> Throughput:
    result = Throughput(label)
    stop = time.perf_counter() + seconds
    rng = random.Random(7)

    async def client(n: int) -> None:
        school = schools[n % len(schools)]
        headers = {"Authorization": f"Bearer {school.key}"}
        url = f"{base}/api/v1/schools/{school.id}/parts-requests"
        while time.perf_counter() < stop:
            body = {
                "asset_id": school.asset,
                "needed_by": "2031-09-01",
                "policy": rng.choice(["all_or_none", "partial"]),
                "lines": lines(rng),
            }
            started = time.perf_counter()
            async with session.post(
                url, headers={**headers, "Idempotency-Key": secrets.token_hex(8)}, json=body
            ) as r:
                answer = await r.json()
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            if r.status == 201:
                result.answered += 1
                result.statuses[answer["status"]] = result.statuses.get(answer["status"], 0) + 1
            else:
                result.errors += 1

    async with PostgresCpu(database_url) as database:
        cpu, db_cpu = cpu_seconds(pid), await database.sample()
        watcher = asyncio.create_task(database.watch())
        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        result.seconds = time.perf_counter() - started
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        result.cpu_seconds = cpu_seconds(pid) - cpu
        result.db_cpu_seconds = cpu_spent(db_cpu, await database.sample())
        result.db_waits = waits_share(database.waits)
    return result


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench parts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 products, 3 s, 30 listing rounds")
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="each throughput phase")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--schools", type=int, default=20)
    parser.add_argument("--scarce-skus", type=int, default=5)
    parser.add_argument(
        "--fitment-share", type=float, default=0.3, help="the stocked requests with a fitment line too"
    )
    parser.add_argument("--listing-requests", type=int, default=200)
    parser.add_argument("--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/0", help="(only to clean up its prefix)"
    )
    args = parser.parse_args(list(argv))
    if args.quick:
        args.products, args.seconds, args.listing_requests = min(args.products, 10_000), 3.0, 30
    return args


async def run(args: argparse.Namespace) -> int:
    secret = secrets.token_urlsafe(32)
    admin = admin_headers(secret)
    async with contextlib.AsyncExitStack() as stack:
        url, _ = await stack.enter_async_context(
            throwaway_postgres_and_redis(args.postgres_admin_url, args.redis_url)
        )
        base, pid = await stack.enter_async_context(hub_process(url, secret, "--region", "eu"))
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        )
        for wid in ("w1", "w2"):
            async with session.post(
                base + "/api/v1/warehouses", headers=admin, json={"id": wid, "region": "eu", "name": wid}
            ) as r:
                assert r.status == 201, await r.text()
        started = time.perf_counter()
        rows = await seed(url, args.products)
        print(
            f"seeded {args.products:,} products ({STOCKED:,} stocked at 2 warehouses)"
            f" in {time.perf_counter() - started:.1f} s"
        )

        found = [Case(label, query) for label, query in cases()]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one:
            await measure_listing(one, base, found, args.listing_requests)
        for case in found:
            await explain(url, case)
        print(
            f"\n## fitment-filter listing, {args.products:,} products, PostgreSQL"
            f" (limit 50, {args.listing_requests} rounds)\n"
        )
        print("| filter | items | p50 ms | p99 ms | max ms | GIN index |")
        print("|---|---:|---:|---:|---:|---|")
        for case in found:
            lat = case.latencies_ms
            print(
                f"| {case.label} | {case.items} | {percentile(lat, 0.5):.2f} | {percentile(lat, 0.99):.2f}"
                f" | {max(lat):.2f} | {'yes' if case.uses_index else 'no'} |"
            )
        for case in found:
            print(f"\n-- plan of {case.label}:")
            for line in case.plan:
                print(f"   {line}")

        schools = await make_schools(session, base, admin, args.schools)
        stocked = [r[1] for r in rows[:STOCKED]]
        fords = [r for r in rows[:STOCKED] if json.loads(r[7])["fitment"]["make"] == "Ford"]

        def plenty(rng: random.Random) -> list[dict[str, Any]]:
            picked: list[dict[str, Any]] = [
                {"sku": rng.choice(stocked), "quantity": rng.randint(1, 3)} for _ in range(rng.randint(1, 2))
            ]
            if rng.random() < args.fitment_share and fords:
                fitment = json.loads(rng.choice(fords)[7])["fitment"]
                picked.append(
                    {
                        "query": {
                            "attributes": {
                                "fitment.make": "Ford",
                                "fitment.model": fitment["model"],
                                "fitment.year": fitment["year"][1],
                            }
                        },
                        "quantity": 1,
                    }
                )
            return picked

        scarce = [r[1] for r in rows[STOCKED : STOCKED + args.scarce_skus]]

        def short(rng: random.Random) -> list[dict[str, Any]]:
            return [{"sku": rng.choice(scarce), "quantity": rng.randint(1, 3)}]

        phases = [
            await post_requests(
                session,
                base,
                schools,
                plenty,
                args.clients,
                args.seconds,
                pid,
                "stocked (reserved at once)",
                url,
            ),
            await post_requests(
                session,
                base,
                schools,
                short,
                args.clients,
                args.seconds,
                pid,
                f"scarce: {args.scarce_skus} SKUs, no stock (backordered)",
                url,
            ),
        ]
        print(f"\n## parts requests, {args.clients} clients, {args.schools} schools, one hub process\n")
        print(
            "| phase | requests | req/s | p50 ms | p99 ms | hub CPU ms/request | PostgreSQL CPU ms/request"
            " | errors | statuses | PostgreSQL backends' waits |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for p in phases:
            lat = p.latencies_ms
            print(
                f"| {p.label} | {p.answered:,} | {p.answered / p.seconds:,.0f} | {percentile(lat, 0.5):.1f} |"
                f" {percentile(lat, 0.99):.1f} | {1000 * p.cpu_seconds / max(1, p.answered):.2f} |"
                f" {1000 * p.db_cpu_seconds / max(1, p.answered):.2f} | {p.errors} | {p.statuses} |"
                f" {p.db_waits} |"
            )
        # Stock arrives for each scarce product: one adjustment fills its whole queue, in order.
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            for sku in scarce:
                product_id, waiting, units = await conn.fetchrow(
                    "SELECT p.id, COUNT(b.seq), COALESCE(SUM(l.backordered), 0) FROM products p"
                    " LEFT JOIN parts_backorders b ON b.product_id = p.id"
                    " LEFT JOIN parts_request_lines l"
                    " ON l.request_id = b.request_id AND l.line_no = b.line_no"
                    " WHERE p.sku = $1 GROUP BY p.id",
                    sku,
                )
                started = time.perf_counter()
                async with session.post(
                    f"{base}/api/v1/products/{product_id}/inventory/w1/adjustments",
                    headers=admin,
                    json={"delta": int(units)},
                ) as r:
                    level = await r.json()
                elapsed = (time.perf_counter() - started) * 1000
                left = await conn.fetchval(
                    "SELECT COUNT(*) FROM parts_backorders WHERE product_id = $1", product_id
                )
                print(
                    f"stock arrives for {sku}: {int(units):,} units fill {waiting:,} queued lines"
                    " in one adjustment:"
                    f" {elapsed:.0f} ms ({elapsed / max(1, waiting):.2f} ms a line), {left} still queued,"
                    f" reserved {level['reserved']} of {level['on_hand']}"
                )
        finally:
            await conn.close()
    return 0


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(args))
    return uvloop.run(run(args))


if __name__ == "__main__":  # python -m bench.parts is python -m bench parts
    import sys

    sys.exit(main(sys.argv[1:]))
