"""``python -m bench client --sections storm``: reconnect-to-resumed time for N Python SDK clients.

Two hub processes (``a`` and ``b``) of region eu share a throwaway PostgreSQL database and Redis prefix.
N ``synchub_client.Client``\\ s, spread over ``--storm-workers`` processes (each on uvloop, one aiohttp
session), are given the node list ``[a, b]`` and follow ``inventory:eu`` on ``a``. The stock of one
product changes ``--storm-rate`` times a second through ``b``. Once every client has its subscription
confirmed, node ``a`` is stopped (SIGTERM: it closes every WebSocket with 1001, going away) and every
client, as the SDK does on 1001, reconnects at once to ``b`` and resubscribes from the position of the
last event it had, while the publishing goes on.

Reported: drop → every client resubscribed on ``b`` (the hub confirmed its ``since``; from each
subscription's ``subscribed_at``, CLOCK_MONOTONIC, comparable across the processes), its median, and
per client the published versions **missed** and **duplicated** (each event carries the stock row's
``version``, which the hub answered each change with). Both must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench._hub import (
    adjust_at,
    admin_headers,
    cpu_seconds,
    hub_process,
    stock_product,
    throwaway_postgres_and_redis,
)

# The SDK is its own project (clients/python); a checkout runs it from there, as the tests do.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "clients" / "python"))

from synchub_client import Backoff, Client, Event, State, Subscription  # noqa: E402


async def _worker(urls: list[str], count: int, spread: float) -> None:
    """Hold ``count`` SDK clients; answer ``report FIRST LAST`` on stdin with their figures."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False))
    clients: list[Client] = []
    subs: list[Subscription] = []
    versions: list[list[int]] = []
    dropped_at: list[list[float]] = []  # when each client's connections ended (its reconnect began)
    gate = asyncio.Semaphore(100)  # connect in waves, as apps started over time would

    async def one(i: int) -> None:
        got: list[int] = []
        versions.append(got)
        client = Client(
            urls,
            session=session,
            backoff=Backoff(base=0.2, cap=5.0),
            heartbeat=60.0,
            going_away_spread=spread,
        )
        dropped: list[float] = []
        dropped_at.append(dropped)
        client.state_changes.append(
            lambda state: dropped.append(time.monotonic()) if state is State.CONNECTING else None
        )
        sub = client.subscribe("inventory:eu")
        sub.listeners.append(
            lambda item: got.append(int(item.data["version"])) if isinstance(item, Event) else None
        )
        clients.append(client)
        subs.append(sub)
        async with gate:
            await client.start()
            await sub.ready.wait()

    await asyncio.gather(*(one(i) for i in range(count)))
    print(json.dumps({"ready": len(subs)}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] != "report":
            continue
        first, last = int(line[1]), int(line[2])
        deadline = time.monotonic() + 180

        def caught_up(last: int = last) -> bool:
            pairs = zip(subs, versions, strict=True)
            return all(s.confirmations >= 2 and v and v[-1] >= last for s, v in pairs)

        while time.monotonic() < deadline and not caught_up():  # noqa: ASYNC110 - 10,000 clients polled
            await asyncio.sleep(0.1)  # the stragglers of a storm on a small machine
        expected = set(range(first, last + 1))
        missed = [len(expected - set(v)) for v in versions]
        duplicated = [len(v) - len(set(v)) for v in versions]
        report = {
            "subscribed_at": [s.subscribed_at for s in subs],
            "closed_at": [d[-1] if len(d) >= 2 else None for d in dropped_at],
            "confirmations": [s.confirmations for s in subs],
            "missed": sum(missed),
            "clients_missing": sum(1 for m in missed if m),
            "duplicated": sum(duplicated),
            "clients_with_duplicates": sum(1 for d in duplicated if d),
            "on_b": sum(1 for c in clients if c.url == urls[1]),
        }
        print(json.dumps(report), flush=True)
        break
    for client in clients:
        await client.close()
    await session.close()


def worker_command(args: argparse.Namespace, base_a: str, base_b: str, count: int) -> list[str]:
    """A worker process holding ``count`` clients of the SDK under test (``--storm-sdk``): this module's
    Python worker, or the TypeScript SDK's (clients/js/test/storm-worker.ts, same protocol on stdio)."""
    if getattr(args, "storm_sdk", "python") == "js":
        script = ROOT / "clients" / "js" / "build" / "test" / "storm-worker.js"
        if not script.exists():
            raise SystemExit("build the TypeScript SDK first: cd clients/js && npm ci && npm run build")
        return ["node", str(script), base_a, base_b, str(count)]
    return [
        sys.executable,
        "-m",
        "bench.client_storm",
        "--worker",
        base_a,
        base_b,
        str(count),
        str(args.storm_spread),
    ]


async def storm(args: argparse.Namespace) -> dict[str, Any]:
    secret = secrets.token_urlsafe(24)
    per_worker = [args.storm_clients // args.storm_workers] * args.storm_workers
    per_worker[0] += args.storm_clients - sum(per_worker)
    async with throwaway_postgres_and_redis(args.postgres, args.redis) as (database, prefix):
        common = ("--region", "eu", "--redis-url", args.redis, "--redis-prefix", prefix)
        async with (
            hub_process(database, secret, *common, "--node-id", "a") as (base_a, pid_a),
            hub_process(database, secret, *common, "--node-id", "b") as (base_b, pid_b),
            aiohttp.ClientSession() as session,
        ):
            admin = admin_headers(secret)
            url = await stock_product(session, base_b, admin)
            workers = [
                await asyncio.create_subprocess_exec(
                    *worker_command(args, base_a, base_b, n),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=2**26,  # a report lists every client's confirmation time on one line
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                for n in per_worker
            ]
            started = time.perf_counter()
            for worker in workers:
                assert worker.stdout is not None
                line = await asyncio.wait_for(worker.stdout.readline(), 600)
                if not line:
                    raise RuntimeError("a storm worker died while connecting")
            connect_s = time.perf_counter() - started
            versions: list[int] = []
            stop = asyncio.Event()
            publishing = asyncio.create_task(
                adjust_at(session, url, admin, rate=args.storm_rate, stop=stop, versions=versions)
            )
            await asyncio.sleep(args.storm_before)
            cpu_b = cpu_seconds(pid_b)
            cpu_workers = sum(cpu_seconds(w.pid) for w in workers)
            dropped_at = time.monotonic()
            os.kill(pid_a, signal.SIGTERM)  # node a goes away: 1001 to every client
            await asyncio.sleep(args.storm_after)
            stop.set()
            await publishing
            await asyncio.sleep(1.0)  # the last events on their way
            reports = []
            for worker in workers:
                assert worker.stdin is not None and worker.stdout is not None
                worker.stdin.write(f"report {min(versions)} {max(versions)}\n".encode())
                await worker.stdin.drain()
                reports.append(json.loads(await asyncio.wait_for(worker.stdout.readline(), 300)))
                if len(reports) == 1:  # written once every client caught up: CPU from the drop to then
                    cpu_b = cpu_seconds(pid_b) - cpu_b
                    cpu_workers = sum(cpu_seconds(w.pid) for w in workers) - cpu_workers
                worker.stdin.close()
            for worker in workers:
                await worker.wait()
    resumed = [
        at - dropped_at
        for r in reports
        for at, n in zip(r["subscribed_at"], r["confirmations"], strict=True)
        if at is not None and n >= 2
    ]
    closed = [at - dropped_at for r in reports for at in r["closed_at"] if at is not None]
    return {
        "clients": args.storm_clients,
        "workers": args.storm_workers,
        "going_away_spread_s": args.storm_spread,
        "connect_all_s": round(connect_s, 2),
        "published": len(versions),
        "resumed": len(resumed),
        "on_b": sum(r["on_b"] for r in reports),
        "told_all_s": round(max(closed), 3) if closed else None,  # drop → the last client's 1001
        "told_median_s": round(statistics.median(closed), 3) if closed else None,
        "resubscribed_all_s": round(max(resumed), 3) if resumed else None,
        "resubscribed_median_s": round(statistics.median(resumed), 3) if resumed else None,
        "node_b_cpu_ms_per_client": round(cpu_b / args.storm_clients * 1000, 2),
        "sdk_cpu_ms_per_client": round(cpu_workers / args.storm_clients * 1000, 2),
        "missed": sum(r["missed"] for r in reports),
        "clients_missing": sum(r["clients_missing"] for r in reports),
        "duplicated": sum(r["duplicated"] for r in reports),
        "clients_with_duplicates": sum(r["clients_with_duplicates"] for r in reports),
    }


def main() -> None:
    if sys.argv[1:2] != ["--worker"]:
        raise SystemExit("run it as: python -m bench client --sections storm")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency of the hub
        pass
    asyncio.run(_worker(sys.argv[2:4], int(sys.argv[4]), float(sys.argv[5])))


if __name__ == "__main__":
    main()
