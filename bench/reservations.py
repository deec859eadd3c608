"""Reservations per second over real HTTP, on SQLite and PostgreSQL, with the oversell count.

Scenarios (each against a fresh hub process and a fresh database):
  hot-sku    every request reserves 1 unit of one product (the flash-sale row lock)
  many-skus  requests spread over 1,000 products
  flash-sale 50 units, ``--flash-requests`` concurrent requests: exactly 50 must succeed

Run: ``python -m bench reservations [--seconds 5] [--concurrency 64] [--backends sqlite,postgres]``.
PostgreSQL comes from ``--postgres-admin-url``; the bench creates and drops its own database.

The requests come from ``--users`` customers in turn (default 1, as ever). The hub runs without the
reservation caps (docs/security.md), which one bench user reserving thousands of units would hit;
``--caps on`` turns them on with a per-user cap no user reaches, to measure what checking them costs
(with one user that holds every reservation, the check sums them all: use ``--users 1000``).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench._hub import cpu_seconds, hub_process
from bench.http_client import HttpConnection, HttpError, request_bytes
from hub.auth import issue_token


@dataclass
class Result:
    backend: str
    scenario: str
    requests: int
    reserved: int
    refused: int
    errors: int
    seconds: float
    hub_cpu: float
    client_cpu: float
    latencies: list[float]
    oversold: int

    def row(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        rate = self.requests / self.seconds if self.seconds else 0.0
        return (
            f"| {self.backend} | {self.scenario} | {self.requests} | {self.reserved} | {self.refused} | "
            f"{self.errors} | {rate:,.0f} | {p50:.1f} | {p99:.1f} | {self.hub_cpu:.2f} | "
            f"{self.client_cpu:.2f} | {self.oversold} |"
        )


async def _json(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
    async with session.request(method, url, **kw) as response:
        body = await response.json(content_type=None)
        if response.status >= 300:
            raise RuntimeError(f"{method} {url}: {response.status} {body}")
        return body


async def _seed(
    session: aiohttp.ClientSession, base: str, admin: dict[str, str], products: int, on_hand: int
) -> list[str]:
    await _json(
        session,
        "POST",
        base + "/api/v1/warehouses",
        headers=admin,
        json={"id": "w1", "region": "eu", "name": "w1"},
    )
    ids = []
    for i in range(products):
        body = await _json(
            session,
            "POST",
            base + "/api/v1/products",
            headers=admin,
            json={"sku": f"B-{i}", "name": f"bench {i}", "price": "1.00"},
        )
        ids.append(body["id"])
        await _json(
            session,
            "PUT",
            f"{base}/api/v1/products/{body['id']}/inventory/w1",
            headers=admin,
            json={"on_hand": on_hand},
        )
    return ids


async def run_scenario(backend: str, database_url: str, scenario: str, args: argparse.Namespace) -> Result:
    secret = secrets.token_urlsafe(32)
    admin = {"Authorization": f"Bearer {issue_token(secret, 'bench-admin', ['admin'])}"}
    customers = [
        {"Authorization": f"Bearer {issue_token(secret, f'bench-{n}' if n else 'bench', ['customer'])}"}
        for n in range(args.users)
    ]
    # Caps checked but never reached (bench/_hub.py starts hubs with them off).
    caps = (
        ("--max-reserve-per-line=10", "--max-active-reserved-per-user=1000000") if args.caps == "on" else ()
    )
    async with hub_process(database_url, secret, *caps) as (base, pid), aiohttp.ClientSession() as session:
        if scenario == "many-skus":
            products = await _seed(session, base, admin, 1000, 1_000_000)
            initial = 1_000_000
        elif scenario == "hot-sku":
            products = await _seed(session, base, admin, 1, 1_000_000)
            initial = 1_000_000
        else:
            products = await _seed(session, base, admin, 1, 50)
            initial = 50
        counts = {"reserved": 0, "refused": 0, "errors": 0}
        latencies: list[float] = []
        sequence = iter(range(10**9))
        host, port = base.removeprefix("http://").split(":")
        auths = [{**customer, "Content-Type": "application/json"} for customer in customers]

        async def reserve(conn: HttpConnection) -> None:
            n = next(sequence)
            body = orjson.dumps({"lines": [{"product_id": products[n % len(products)], "quantity": 1}]})
            request = request_bytes(
                "POST",
                "/api/v1/reservations",
                host,
                {**auths[n % len(auths)], "Idempotency-Key": f"k{n}"},
                body,
            )
            started = time.perf_counter()
            try:
                status = (await conn.send(request)).status
            except HttpError:
                status = 0
            latencies.append(time.perf_counter() - started)
            counts["reserved" if status == 201 else "refused" if status == 409 else "errors"] += 1

        async def worker(requests: int | None, deadline: float) -> None:
            conn = await HttpConnection.open(host, int(port))
            try:
                done = 0
                while (requests is None or done < requests) and time.perf_counter() < deadline:
                    await reserve(conn)
                    done += 1
            finally:
                conn.close()

        cpu_before = cpu_seconds(pid)
        client_cpu_before = time.process_time()
        started = time.perf_counter()
        if scenario == "flash-sale":
            deadline = started + 60  # bounded: the flash sale ends long before
            await asyncio.gather(*(worker(1, deadline) for _ in range(args.flash_requests)))
        else:
            deadline = started + args.seconds
            await asyncio.gather(*(worker(None, deadline) for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu_before
        hub_cpu = cpu_seconds(pid) - cpu_before
        reserved_total = 0
        for product_id in products:
            inv = await _json(session, "GET", f"{base}/api/v1/products/{product_id}/inventory", headers=admin)
            reserved_total += inv["total"]["reserved"]
            if inv["total"]["available"] < 0:
                raise AssertionError("negative availability")
    oversold = max(0, reserved_total - initial * len(products)) + max(0, counts["reserved"] - reserved_total)
    return Result(
        backend,
        scenario,
        sum(counts.values()),
        counts["reserved"],
        counts["refused"],
        counts["errors"],
        elapsed,
        hub_cpu,
        client_cpu,
        latencies,
        oversold,
    )


async def _postgres_db(admin_url: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> int:
    print(
        "| backend | scenario | requests | reserved | refused (409) | errors | req/s | p50 ms | p99 ms "
        "| hub CPU s | client CPU s | oversold |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    failures = 0
    for backend in args.backends.split(","):
        for scenario in args.scenarios.split(","):
            if backend == "postgres":
                name = f"synchub_bench_{secrets.token_hex(4)}"
                await _postgres_db(args.postgres_admin_url, f'CREATE DATABASE "{name}"')
                url = args.postgres_admin_url.rsplit("/", 1)[0] + "/" + name
            else:
                url = str(Path(tempfile.mkdtemp(prefix="synchub-bench-")) / "bench.sqlite3")
            try:
                result = await run_scenario(backend, url, scenario, args)
            finally:
                if backend == "postgres":
                    await _postgres_db(
                        args.postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
                    )
            print(result.row(), flush=True)
            if result.oversold or (scenario == "flash-sale" and result.reserved != 50):
                failures += 1
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench reservations")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each timed scenario")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--flash-requests", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--users", type=int, default=1, help="customers the requests come from, in turn")
    parser.add_argument(
        "--caps",
        choices=("off", "on"),
        default="off",
        help="reservation caps on the hub: on = 10 units a line, 1,000,000 held per user (never hit)",
    )
    parser.add_argument(
        "--scenarios", default="hot-sku,many-skus,flash-sale", help="comma-separated, of the three above"
    )
    args = parser.parse_args(argv)
    try:
        import uvloop

        return uvloop.run(main_async(args))
    except ImportError:
        return asyncio.run(main_async(args))


if __name__ == "__main__":  # python -m bench.reservations is python -m bench reservations
    import sys

    sys.exit(main(sys.argv[1:]))
