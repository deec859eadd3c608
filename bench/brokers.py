"""Broker fan-out: one Redis, a Redis Cluster of 3 masters (each with a replica), NATS JetStream.

The same load on each broker (``--brokers``): the streams of ``--regions`` regions (14 each, as the hub
names them: ``inventory``, ``reviews``, ``user.0…7``, ``parts.0…3``), ``--publications`` publications
spread evenly over them, published as relays do (``publish_many`` batches of ``--batch``, each with a
dedupe key, 512 per relay, and the key's next version; ``--publishers`` relays at once), and ``--nodes``
subscribing nodes (broker instances) each reading every stream, as every hub node reads its region's
streams. Reported: publications per
second while publishing, deliveries (publications × nodes) and the fraction delivered, publish → delivery
latency p50/p99 (the time of the ``publish_many`` call, carried in the data, to the handler), the CPU
of this process (publishing and the nodes' readers) and of each server process.

One Redis and the cluster's 6 nodes are private redis-servers the bench starts (no persistence, loopback);
NATS is the server at ``--nats-url``. Everything shares one machine: a cluster's gain there is the spread
of the servers' CPU over its masters (each has its share of the streams' slots), not more throughput,
which the single client process bounds.

Run: ``python -m bench brokers [--regions 3] [--publications 20000] [--nodes 2]
[--brokers redis,redis-cluster,nats]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import secrets
import statistics
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from bench._hub import cpu_seconds
from bench.redis_cluster import ClusterUnavailable, local_cluster, local_redis
from sync.broker import Broker, BrokerError, Publication, PublishItem
from sync.broker_nats import NatsBroker
from sync.broker_redis import RedisBroker

KINDS = ("redis", "redis-cluster", "nats")
PAYLOAD = 200  # bytes per publication: about a stock change's JSON event
KEYS = 512  # dedupe keys per relay


def region_streams(region: str) -> list[str]:
    return [
        f"inventory.{region}",
        f"reviews.{region}",
        *(f"user.{region}.{i}" for i in range(8)),
        *(f"parts.{region}.{i}" for i in range(4)),
    ]


@dataclass
class Result:
    broker: str
    streams: int
    publications: int
    nodes: int
    publish_seconds: float = 0.0
    delivered: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    client_cpu_s: float = 0.0
    server_cpu_s: dict[str, float] = field(default_factory=dict)  # server process -> CPU seconds
    error: str | None = None

    @property
    def per_second(self) -> float:
        return self.publications / self.publish_seconds if self.publish_seconds else 0.0

    def percentile(self, q: float) -> float:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else 0.0
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[round(q) - 1]


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def _server(kind: str, nats_url: str) -> Iterator[tuple[str, dict[str, int]]]:
    """The broker URL for ``kind`` and the server processes to watch (name -> pid)."""
    if kind == "redis":
        with local_redis() as (url, process):
            yield url, {"redis": process.pid}
    elif kind == "redis-cluster":
        with local_cluster() as cluster:
            masters = cluster.masters()
            yield (
                cluster.url,
                {
                    f"{'master' if port in masters else 'replica'} :{port}": process.pid
                    for port, process in sorted(cluster.processes.items())
                },
            )
    else:
        yield nats_url, {}


@contextlib.asynccontextmanager
async def _brokers(kind: str, url: str, count: int) -> AsyncIterator[list[Broker]]:
    prefix = f"bench_{secrets.token_hex(4)}"
    made: list[Broker] = []
    for _ in range(count):
        broker: Broker
        if kind == "nats":
            broker = NatsBroker(f"{url}?storage=memory", prefix=prefix, max_len=100_000)
        else:
            broker = RedisBroker(url, prefix=prefix + ":", max_len=100_000)
        await broker.start()
        made.append(broker)
    try:
        yield made
    finally:
        for broker in made:
            await broker.stop()
        if kind == "nats" and made:
            with contextlib.suppress(Exception):
                await _delete_nats_streams(url, prefix)


async def _delete_nats_streams(url: str, prefix: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(prefix + "_"):
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


async def run_one(kind: str, args: argparse.Namespace) -> Result:
    streams = [s for r in range(args.regions) for s in region_streams(f"r{r}")]
    result = Result(kind, len(streams), args.publications, args.nodes)
    try:
        with _server(kind, args.nats_url) as (url, servers):
            await _measure(kind, url, servers, streams, args, result)
    except (ClusterUnavailable, BrokerError, OSError, TimeoutError) as exc:
        result.error = repr(exc)[:300]
    return result


async def _measure(
    kind: str, url: str, servers: dict[str, int], streams: list[str], args: argparse.Namespace, result: Result
) -> None:
    done = asyncio.Event()
    expected = args.publications * args.nodes

    def received(publication: Publication) -> None:
        sent_ns = int(publication.data[:20])
        result.latencies_ms.append((time.perf_counter_ns() - sent_ns) / 1e6)
        result.delivered += 1
        if result.delivered >= expected:
            done.set()

    async with _brokers(kind, url, args.publishers + args.nodes) as brokers:
        publishers, nodes = brokers[: args.publishers], brokers[args.publishers :]
        for node in nodes:
            for stream in streams:
                node.subscribe(stream, received)
        await asyncio.sleep(1.0)  # the readers reach the server
        items = [(streams[i % len(streams)], i) for i in range(args.publications)]
        batches = [items[i : i + args.batch] for i in range(0, len(items), args.batch)]
        cpu_before = {name: cpu_seconds(pid) for name, pid in servers.items()}
        self_before = _self_cpu()
        started = time.perf_counter()

        async def relay(index: int, share: list[list[tuple[str, int]]], broker: Broker) -> None:
            # Dedupe keys as the outbox has them (product x warehouse rows, KEYS of them per relay, each
            # version after the last), the relays' keys apart so that none drops another's.
            for batch in share:
                now = f"{time.perf_counter_ns():020d}".encode()
                payload = now + b" " * (PAYLOAD - len(now))
                sent: list[PublishItem] = [
                    (s, payload, (f"r{index}/k{n % KEYS}", n // KEYS + 1)) for s, n in batch
                ]
                await broker.publish_many(sent)

        await asyncio.gather(
            *(relay(i, batches[i :: args.publishers], broker) for i, broker in enumerate(publishers))
        )
        result.publish_seconds = time.perf_counter() - started
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), args.timeout)
        result.client_cpu_s = _self_cpu() - self_before
        result.server_cpu_s = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in servers.items()}


def report(results: list[Result]) -> None:
    print(
        "| broker | streams | publications | nodes | publications/s | delivered | p50 ms | p99 ms "
        "| client CPU s | server CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.error:
            print(f"| {r.broker} | {r.streams} | {r.publications} | {r.nodes} | failed: {r.error} |||||")
            continue
        expected = r.publications * r.nodes
        servers = ", ".join(f"{name} {cpu:.2f}" for name, cpu in r.server_cpu_s.items()) or "not measured"
        print(
            f"| {r.broker} | {r.streams} | {r.publications} | {r.nodes} | {r.per_second:,.0f} "
            f"| {r.delivered / expected:.1%} | {r.percentile(50):.1f} | {r.percentile(99):.1f} "
            f"| {r.client_cpu_s:.2f} | {servers} |"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench brokers", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--brokers", default="redis,redis-cluster,nats", help="comma-separated: " + ",".join(KINDS)
    )
    parser.add_argument("--regions", type=int, default=3, help="regions (14 streams each)")
    parser.add_argument("--publications", type=int, default=20_000)
    parser.add_argument(
        "--batch", type=int, default=100, help="publications per publish_many (a relay sweep)"
    )
    parser.add_argument("--publishers", type=int, default=2, help="relays publishing at once")
    parser.add_argument("--nodes", type=int, default=2, help="subscribing nodes, each reading every stream")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the deliveries")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    kinds = [k.strip() for k in args.brokers.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SystemExit(f"unknown brokers: {', '.join(unknown)} (choose from {', '.join(KINDS)})")
    results = []
    for kind in kinds:
        print(f"-- {kind}: {args.publications} publications over {args.regions * 14} streams", flush=True)
        results.append(asyncio.run(run_one(kind, args)))
    report(results)
    return 1 if any(r.error or r.delivered < r.publications * r.nodes for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
