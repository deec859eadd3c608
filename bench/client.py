"""How many events a second one Python SDK client (clients/python) consumes, per transport.

A real hub process (SQLite, in-memory broker; ``--database-url`` for another) gets ``--backlog``
(1,500) stock changes on ``inventory:eu``; then one fresh ``synchub_client.Client`` subscribes from the
position before them and the app iterates the subscription until it has every one: the hub replays
the backlog as fast as the client takes it, so the figure is the client's consumption rate (with the
hub's sending on the same machine), not the producer's. Rounds repeat up to ``--events`` per
transport; only the consuming is timed. (A backlog over the hub's send buffer, 2,000 messages, is cut
off with 4101 before the replay gets through: the SDK then resyncs from the snapshot instead.)
Printed per transport: events/s, the client process's CPU µs per event, the hub's CPU µs
per event, and a check that every version arrived once, in order.

Run: ``python -m bench client [--events 15000] [--transports ws-msgpack,ws-json,sse,poll]``; the
reconnect storm of N SDK clients is ``--sections storm`` (bench/client_storm.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench._hub import adjust_at, admin_headers, cpu_seconds, hub_process, stock_product

# The SDK is its own project (clients/python); a checkout runs it from there, as the tests do.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients" / "python"))

from synchub_client import Client, Event, Transport

TRANSPORTS = {
    "ws-msgpack": ((Transport.WEBSOCKET,), "msgpack"),
    "ws-json": ((Transport.WEBSOCKET,), "json"),
    "sse": ((Transport.SSE,), "json"),
    "poll": ((Transport.POLL,), "json"),
}


async def consume(base: str, name: str, since: str, count: int) -> tuple[list[int], str, float, float]:
    """One client from ``since`` until ``count`` events: (versions, last position, wall s, CPU s)."""
    transports, encoding = TRANSPORTS[name]
    versions: list[int] = []
    position = since
    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with Client(base, transports=transports, encoding=encoding) as client:
        sub = client.subscribe("inventory:eu", since=since)
        async for item in sub:
            if isinstance(item, Event):
                versions.append(int(item.data["version"]))
                position = item.position
                if len(versions) >= count:
                    break
            else:
                raise RuntimeError(f"{name}: {item}")
    return versions, position, time.perf_counter() - wall0, time.process_time() - cpu0


async def run(args: argparse.Namespace) -> int:
    secret = secrets.token_urlsafe(24)
    workdir = Path(tempfile.mkdtemp(prefix="synchub-bench-client-"))
    database = args.database_url or str(workdir / "hub.sqlite3")
    rounds = max(1, args.events // args.backlog)
    async with (
        hub_process(database, secret, "--region", "eu") as (base, pid),
        aiohttp.ClientSession() as session,
    ):
        admin = admin_headers(secret)
        url = await stock_product(session, base, admin)
        print(
            f"# {rounds} rounds per transport: {args.backlog} stock changes made, then one client resumes"
            f" from before them and takes them all; load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        header = f"{'transport':<11} {'events':>7} {'events/s':>9} {'client µs/ev':>13} {'hub µs/ev':>10}"
        print(header + f" {'once, in order':>15}", flush=True)
        for name in args.transports.split(","):
            async with session.get(base + "/api/v1/inventory?region=eu") as response:
                position = (await response.json())["position"]
            versions: list[int] = []
            wall = cpu = hub = 0.0
            for _ in range(rounds):
                await adjust_at(session, url, admin, rate=1e9, count=args.backlog, in_flight=32)
                hub0 = cpu_seconds(pid)
                got, position, seconds, used = await consume(base, name, position, args.backlog)
                hub += cpu_seconds(pid) - hub0
                versions += got
                wall += seconds
                cpu += used
            once = versions == list(range(versions[0], versions[0] + len(versions)))
            n = len(versions)
            print(
                f"{name:<11} {n:>7} {n / wall:>9.0f} {cpu / n * 1e6:>13.1f} {hub / n * 1e6:>10.1f}"
                f" {once!s:>15}",
                flush=True,
            )
    print(f"# reproduce: python -m bench client --events {args.events} --transports {args.transports}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench client", description=__doc__)
    parser.add_argument("--events", type=int, default=15_000, help="per transport")
    parser.add_argument(
        "--backlog",
        type=int,
        default=1500,
        help="events per resume (under the hub's 2,000-message send buffer)",
    )
    parser.add_argument("--transports", default="ws-msgpack,ws-json,sse,poll")
    parser.add_argument("--database-url", default=None, help="default: a new SQLite file")
    parser.add_argument("--sections", default="consume", help="consume, storm (bench/client_storm.py)")
    parser.add_argument("--storm-clients", type=int, default=10_000)
    parser.add_argument("--storm-workers", type=int, default=2, help="client processes")
    parser.add_argument("--storm-sdk", choices=("python", "js"), default="python", help="whose clients")
    parser.add_argument("--storm-rate", type=float, default=20.0, help="stock changes a second")
    parser.add_argument("--storm-before", type=float, default=2.0, help="seconds published before the drop")
    parser.add_argument("--storm-after", type=float, default=8.0, help="seconds published after it")
    parser.add_argument(
        "--storm-spread",
        type=float,
        default=0.0,
        help="the clients' going_away_spread (s): 1001 reconnects spread",
    )
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    if "consume" in sections:
        asyncio.run(run(args))
    if "storm" in sections:
        from bench.client_storm import storm

        figures = asyncio.run(storm(args))
        print("# storm: node a stopped (1001), every SDK client resumes on node b")
        for key, value in figures.items():
            print(f"{key:<24} {value}")
        print(
            f"# reproduce: python -m bench client --sections storm --storm-clients {args.storm_clients}"
            f" --storm-workers {args.storm_workers} --storm-spread {args.storm_spread}"
            f" --storm-sdk {args.storm_sdk}"
        )
    return 0


if __name__ == "__main__":  # python -m bench.client is python -m bench client
    import sys

    sys.exit(main(sys.argv[1:]))
