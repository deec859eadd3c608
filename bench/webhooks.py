"""Webhook deliveries per second from one hub process to a local receiver, and the hub's CPU per delivery.

  backlog  ``--events`` stock changes (over ``--products`` keys) are made while the endpoint is disabled;
           then it is enabled and the hub takes the backlog in from the broker and delivers it (signed,
           up to 16 attempts at once, one per key, each recorded): deliveries/s from the enabling to the
           last one received, and the hub's CPU (user + system, from /proc) per delivery over that time
  steady   stock changes at ``--rate`` a second for ``--seconds``, the endpoint enabled: the time from
           each change's commit (the event's ``ts``) to its arrival at the receiver, p50 and p99

The receiver (an aiohttp server in this process, answering 204 at once) and the load generator run in the
bench's process, not the hub's. The embedded store (SQLite, in-process broker) by default; ``--postgres``
runs the hub on a throwaway PostgreSQL database and Redis prefix instead.

Run: ``python -m bench webhooks [--quick] [--postgres]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bench._hub import admin_headers, cpu_seconds, hub_process, throwaway_postgres_and_redis

WAREHOUSE = "bench-1"


class Receiver:
    def __init__(self) -> None:
        self.count = 0
        self.ids: set[str] = set()
        self.latencies: list[float] = []  # seconds from the event's commit to its arrival
        self.done = asyncio.Event()
        self.expected = 0
        self.port = 0

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.count += 1
        self.ids.add(request.headers.get("webhook-id", ""))
        ts = orjson.loads(body)["data"].get("ts")
        if isinstance(ts, int):
            self.latencies.append(time.time() - ts / 1e6)
        if self.expected and len(self.ids) >= self.expected:
            self.done.set()
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    assert site._server is not None
    receiver.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield receiver
    finally:
        await runner.cleanup()


async def _call(session: aiohttp.ClientSession, method: str, url: str, body: Any) -> Any:
    async with session.request(method, url, json=body) as response:
        if response.status >= 300:
            raise RuntimeError(f"{method} {url} answered {response.status}: {await response.text()}")
        return await response.json()


async def _changes(session: aiohttp.ClientSession, base: str, products: list[str], count: int) -> None:
    """``count`` stock adjustments over the products, 32 requests at a time."""
    queue = iter(range(count))

    async def lane() -> None:
        for n in queue:
            product = products[n % len(products)]
            await _call(
                session,
                "POST",
                f"{base}/api/v1/products/{product}/inventory/{WAREHOUSE}/adjustments",
                {"delta": 1},
            )

    await asyncio.gather(*(lane() for _ in range(32)))


async def _paced(
    session: aiohttp.ClientSession, base: str, products: list[str], rate: float, seconds: float
) -> int:
    made = 0
    started = time.monotonic()
    tasks = []
    while time.monotonic() - started < seconds:
        due = started + made / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        product = products[made % len(products)]
        tasks.append(
            asyncio.create_task(
                _call(
                    session,
                    "POST",
                    f"{base}/api/v1/products/{product}/inventory/{WAREHOUSE}/adjustments",
                    {"delta": 1},
                )
            )
        )
        made += 1
    await asyncio.gather(*tasks)
    return made


async def bench(
    database_url: str, extra: tuple[str, ...], events: int, keys: int, rate: float, seconds: float
) -> dict[str, float]:
    secret = secrets.token_urlsafe(32)
    admin = admin_headers(secret)
    async with (
        receiving() as receiver,
        hub_process(database_url, secret, "--webhook-allow-hosts=127.0.0.1", *extra) as (base, pid),
        aiohttp.ClientSession(headers=admin, connector=aiohttp.TCPConnector(limit=64)) as session,
    ):
        await _call(
            session,
            "POST",
            f"{base}/api/v1/warehouses",
            {"id": WAREHOUSE, "region": "default", "name": "bench"},
        )
        products = [
            (
                await _call(
                    session,
                    "POST",
                    f"{base}/api/v1/products",
                    {"sku": f"WH-{n}", "name": "w", "price": "1.00"},
                )
            )["id"]
            for n in range(keys)
        ]
        made = await _call(
            session,
            "POST",
            f"{base}/api/v1/webhooks",
            {
                "url": f"http://127.0.0.1:{receiver.port}/hook",
                "events": [{"type": "stock.changed"}],
                "enabled": False,
            },
        )
        await _changes(session, base, products, events)
        receiver.expected = events
        cpu = cpu_seconds(pid)
        started = time.monotonic()
        await _call(session, "PATCH", f"{base}/api/v1/webhooks/{made['id']}", {"enabled": True})
        await asyncio.wait_for(receiver.done.wait(), timeout=max(120.0, events / 100))
        elapsed = time.monotonic() - started
        cpu_used = cpu_seconds(pid) - cpu
        backlog = {
            "deliveries": float(len(receiver.ids)),
            "requests": float(receiver.count),
            "per_second": len(receiver.ids) / elapsed,
            "cpu_us": cpu_used / len(receiver.ids) * 1e6,
            "cpu_share": cpu_used / elapsed,
            "elapsed": elapsed,
        }
        # steady: paced changes, commit → arrival
        receiver.latencies.clear()
        before = len(receiver.ids)
        count = await _paced(session, base, products, rate, seconds)
        receiver.expected = before + count
        receiver.done.clear()
        if len(receiver.ids) < receiver.expected:  # (else every one arrived already)
            await asyncio.wait_for(receiver.done.wait(), timeout=60)
        took = sorted(receiver.latencies)
        backlog["steady_rate"] = count / seconds
        backlog["p50_ms"] = statistics.median(took) * 1e3
        backlog["p99_ms"] = took[min(len(took) - 1, int(len(took) * 0.99))] * 1e3
        return backlog


async def run(args: argparse.Namespace) -> None:
    events = 2000 if args.quick else args.events
    seconds = 2.0 if args.quick else args.seconds
    rows = []
    with tempfile.TemporaryDirectory(prefix="synchub-bench-webhooks-") as folder:
        rows.append(
            (
                "SQLite, in-process broker",
                await bench(str(Path(folder) / "hub.sqlite3"), (), events, args.products, args.rate, seconds),
            )
        )
    if args.postgres:
        async with throwaway_postgres_and_redis(args.postgres, args.redis) as (url, prefix):
            extra = (f"--redis-url={args.redis}", f"--redis-prefix={prefix}")
            rows.append(
                ("PostgreSQL + Redis", await bench(url, extra, events, args.products, args.rate, seconds))
            )
    print(f"\n## Webhooks: a backlog of {events:,} stock events over {args.products} keys, one hub process\n")
    print("| store | deliveries/s | hub CPU µs/delivery | hub CPU use | requests (duplicates) |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['per_second']:,.0f} | {r['cpu_us']:,.0f} | {r['cpu_share'] * 100:.0f}% of a core"
            f" | {r['requests']:,.0f} ({r['requests'] - r['deliveries']:,.0f}) |"
        )
    print("\n## Webhooks: steady stock changes, commit → arrival at the receiver\n")
    print("| store | changes/s | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['steady_rate']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench webhooks", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a 2,000-event backlog and 2 s of steady changes"
    )
    parser.add_argument("--events", type=int, default=20_000, help="stock events in the backlog")
    parser.add_argument(
        "--products", type=int, default=100, help="keys (products) the events are spread over"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="steady stock changes a second")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the steady changes last")
    parser.add_argument(
        "--postgres",
        metavar="ADMIN_URL",
        help="also on a throwaway database of this PostgreSQL server (e.g. postgresql://postgres@127.0.0.1/postgres)",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis for --postgres")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(run(args))
    except ImportError:  # pragma: no cover
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":  # python -m bench.webhooks is python -m bench webhooks
    import sys

    sys.exit(main(sys.argv[1:]))
