"""Fan-out: N WebSocket (or SSE) clients on one region channel, stock changes at a fixed rate.

Reports deliveries, delivered fraction, publish→receive latency (from the change's commit timestamp to
its arrival at the client) p50/p99/max, the hub's CPU seconds (from /proc) and deliveries per hub
CPU-second, and the load generator's own CPU. ``--nodes 2`` runs two hubs on one Redis and PostgreSQL:
clients on node B, writes through node A, so the figures include the Redis Streams hop.

Run: ``python -m bench fanout [--clients 1000] [--changes 200] [--rate 100] [--transport ws|sse]
[--nodes 1|2]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench._hub import cpu_seconds, hub_process, throwaway_postgres_and_redis
from hub.auth import issue_token


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Receivers:
    def __init__(self, expected: int) -> None:
        self.latencies: list[float] = []
        self.expected = expected
        self.done = asyncio.Event()

    def record(self, data: dict[str, Any]) -> None:
        self.latencies.append(time.time() - data["ts"] / 1e6)
        if len(self.latencies) >= self.expected:
            self.done.set()


async def ws_client(
    session: aiohttp.ClientSession,
    url: str,
    receivers: Receivers,
    ready: asyncio.Event,
    counter: list[int],
    total: int,
) -> None:
    async with session.ws_connect(url, protocols=("synchub.json",)) as ws:
        await ws.send_str('{"type":"subscribe","channel":"inventory:eu"}')
        async for frame in ws:
            message = orjson.loads(frame.data)
            if message["type"] == "event":
                receivers.record(message["data"])
            elif message["type"] == "subscribed":
                counter[0] += 1
                if counter[0] == total:
                    ready.set()


async def sse_client(
    session: aiohttp.ClientSession,
    url: str,
    receivers: Receivers,
    ready: asyncio.Event,
    counter: list[int],
    total: int,
) -> None:
    async with session.get(url) as response:
        async for line in response.content:
            if line.startswith(b"event: ready"):
                counter[0] += 1
                if counter[0] == total:
                    ready.set()
            elif line.startswith(b"data: ") and b'"type":"event"' in line:
                receivers.record(orjson.loads(line[6:])["data"])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    secret = secrets.token_urlsafe(32)
    admin = {"Authorization": f"Bearer {issue_token(secret, 'bench', ['admin'])}"}
    async with contextlib.AsyncExitStack() as stack:
        if args.nodes == 1:
            database = str(Path(tempfile.mkdtemp(prefix="synchub-fanout-")) / "hub.sqlite3")
            extra: tuple[str, ...] = ("--region", "eu")
        else:
            database, prefix = await stack.enter_async_context(
                throwaway_postgres_and_redis(args.postgres_admin_url, args.redis_url)
            )
            extra = ("--region", "eu", "--redis-url", args.redis_url, "--redis-prefix", prefix)
        writer_base, writer_pid = await stack.enter_async_context(hub_process(database, secret, *extra))
        pids = [writer_pid]
        reader_base = writer_base
        if args.nodes == 2:
            reader_base, reader_pid = await stack.enter_async_context(hub_process(database, secret, *extra))
            pids.append(reader_pid)
        connector = aiohttp.TCPConnector(limit=0)
        session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        async with session.post(
            writer_base + "/api/v1/warehouses", headers=admin, json={"id": "w1", "region": "eu", "name": "w1"}
        ) as r:
            assert r.status == 201, await r.text()
        async with session.post(
            writer_base + "/api/v1/products",
            headers=admin,
            json={"sku": "FAN-1", "name": "fan", "price": "1"},
        ) as r:
            product_id = (await r.json())["id"]
        receivers = Receivers(args.clients * args.changes)
        ready, counter = asyncio.Event(), [0]
        if args.transport == "ws":
            url = reader_base.replace("http", "ws") + "/api/v1/ws"
            tasks = [
                asyncio.create_task(ws_client(session, url, receivers, ready, counter, args.clients))
                for _ in range(args.clients)
            ]
        else:
            url = reader_base + "/api/v1/sse?channels=inventory:eu"
            tasks = [
                asyncio.create_task(sse_client(session, url, receivers, ready, counter, args.clients))
                for _ in range(args.clients)
            ]
        await asyncio.wait_for(ready.wait(), 60)
        cpu_before = [cpu_seconds(pid) for pid in pids]
        own_before = _self_cpu()
        started = time.perf_counter()
        path = f"{writer_base}/api/v1/products/{product_id}/inventory/w1/adjustments"
        for n in range(args.changes):
            target = started + n / args.rate
            await asyncio.sleep(max(0.0, target - time.perf_counter()))
            async with session.post(path, headers=admin, json={"delta": 1}) as r:
                await r.read()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receivers.done.wait(), args.drain_seconds)
        elapsed = time.perf_counter() - started
        hub_cpu = sum(cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True))
        async with session.get(reader_base + "/metrics") as r:
            metrics_text = await r.text()
        lag = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in metrics_text.splitlines()
            if line.startswith("synchub_broker_read_lag_seconds_") and not line.startswith("#")
        }
        read_lag_ms = (
            1000
            * lag.get("synchub_broker_read_lag_seconds_sum", 0.0)
            / max(1.0, lag.get("synchub_broker_read_lag_seconds_count", 0.0))
        )
        own_cpu = _self_cpu() - own_before
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lat = sorted(receivers.latencies) or [0.0]
    delivered = len(receivers.latencies)
    return {
        "transport": args.transport,
        "nodes": args.nodes,
        "clients": args.clients,
        "changes": args.changes,
        "rate": args.rate,
        "deliveries": delivered,
        "delivered_fraction": delivered / (args.clients * args.changes),
        "deliveries_per_s": delivered / elapsed,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "max_ms": lat[-1] * 1000,
        "hub_cpu_s": hub_cpu,
        "deliveries_per_hub_cpu_s": delivered / hub_cpu if hub_cpu else 0.0,
        "loadgen_cpu_s": own_cpu,
        "mean_broker_read_lag_ms": read_lag_ms,
        "elapsed_s": elapsed,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fanout")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0, help="stock changes per second")
    parser.add_argument("--transport", choices=("ws", "sse"), default="ws")
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=1)
    parser.add_argument("--drain-seconds", type=float, default=20.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(
        "| transport | nodes | clients | changes/s | deliveries | delivered | p50 ms | p99 ms | max ms "
        "| hub CPU s | deliveries / hub CPU s | loadgen CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    r = result
    print(
        f"| {r['transport']} | {r['nodes']} | {r['clients']} | {r['rate']:.0f} | {r['deliveries']} | "
        f"{r['delivered_fraction']:.1%} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
        f"{r['hub_cpu_s']:.2f} | {r['deliveries_per_hub_cpu_s']:,.0f} | {r['loadgen_cpu_s']:.2f} |"
    )
    print(
        f"mean commit→node arrival (broker read lag): {r['mean_broker_read_lag_ms']:.1f} ms;"
        f" elapsed {r['elapsed_s']:.1f} s"
    )
    return 0 if r["delivered_fraction"] == 1.0 else 1


if __name__ == "__main__":  # python -m bench.fanout is python -m bench fanout
    import sys

    sys.exit(main(sys.argv[1:]))
