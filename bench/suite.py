"""``python -m bench suite``: synchub beside the servers a user would pick instead, on this machine, with
one load generator, in one run.

Six sections (``--sections``, default all): **throughput** (below), **crossnode** (what the Redis Streams
hop between two hub nodes adds to the latency, :mod:`bench.crossnode`), **storm** (every WebSocket client
dropped at once and resuming: time to resume, missed and duplicated events per client,
:mod:`bench.storm`), **idle** (server memory with 0, 10,000 and 19,000 idle connections, KB per
connection, :mod:`bench.idle`), **sync** (cart edits between the two devices of each user, synchub
beside Hocuspocus, :mod:`bench.sync`; ``python -m bench sync`` runs it alone) and **reviews** (review posts
on one hot product with the aggregate's exactness checked, listings of a product's 100,000 reviews,
:mod:`bench.reviews`; ``python -m bench reviews`` runs it alone).

Throughput: for each server and each client count (1,000 / 10,000 / 19,000; ``--quick``: 200), the suite:

1. starts the server (synchub as a real hub process on the embedded default; the peers of
   ``bench/peers``: bare aiohttp, python-socketio, Node ``ws``, Node socket.io) — a peer that cannot
   be installed or started is reported and skipped, the rest carry on;
2. opens the clients through :mod:`bench.loadgen` (several processes, many loopback source addresses)
   and records the server's resident memory before and after: **idle KB per connection**;
3. publishes at stepped rates (targets in deliveries per second; a step lasts ``--step-seconds``, and
   at least ten publishes) until the server saturates — less than 99% delivered within the drain
   time, deliveries under 90% of the step's rate, or a p99 above ``--max-p99-ms`` — and reports per
   step: deliveries per second, delivered fraction, publish→receive latency p50/p99/max (from the
   ``ts`` each message carries: for synchub the stock change's commit, for the peers the publish), the
   server's CPU seconds from /proc (all its processes) and **deliveries per server CPU-second**, and
   the load generator's own CPU.

``synchub-ws-2w`` is ``synchub serve --workers 2`` on PostgreSQL and Redis (a throwaway database and
key prefix), the one-per-core figure on this 2-core machine.

synchub publishes through its real path — an HTTP stock adjustment, a committed row and its outbox
entry, the relay, the broker and the fan-out — while a peer's ``POST /publish`` just broadcasts: that
cost is synchub's to carry. Results: a JSON file and a Markdown report per run in ``bench/results/``
(ignored by git), PNG plots there when matplotlib is importable (the ``bench`` extra), and progress
lines on stderr.

Every loop is bounded in count and time; every server is on 127.0.0.1; every process it starts, it stops.
``--quick`` (CI smoke, under two minutes) runs every section small: throughput with 200 clients and two
steps on synchub (WebSocket and SSE) and the bare aiohttp peer, cross-node with 50 clients per path,
the storm with 300 clients, idle with 200 and 500 connections on the same three servers, sync on
synchub-sqlite alone with 10 users, reviews at 25 and 50 posts/s with 2,000 reviews listed. The run
exits non-zero unless synchub delivered 100% (throughput's first step, both cross-node paths, sync's
first step: every edit acked and delivered), the storm delivered every event to every client exactly
once (0 missed, 0 duplicated) and every reviews configuration's aggregate is exact.

Run: ``python -m bench suite [--quick] [--sections throughput,crossnode,storm,idle,sync,reviews] [--clients
1000,10000,19000] [--servers synchub-ws,...]`` (or ``synchub bench suite …``); ``--help`` lists each
section's options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.util
import json
import math
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from bench._hub import RUN_FAILURES, cpu_seconds, free_port, hub_process, throwaway_postgres_and_redis
from bench.loadgen import LoadGen, Target
from bench.peers.servers import PeerUnavailable, make_body, rss_bytes, start_peer
from hub.auth import issue_token

if TYPE_CHECKING:
    from bench.crossnode import CrossNode
    from bench.idle import IdleRun
    from bench.reviews import ReviewsRun
    from bench.storm import Storm
    from bench.sync import SyncRun

RESULTS = Path(__file__).resolve().parent / "results"
ALL_SERVERS = (
    "synchub-ws",
    "synchub-ws-2w",
    "synchub-sse",
    "synchub-mix",
    "aiohttp",
    "python-socketio",
    "node-ws",
    "node-socketio",
    "c-epoll",
)
QUICK_SERVERS = ("synchub-ws", "synchub-sse", "aiohttp")
FULL_STEPS = (10_000, 25_000, 50_000, 100_000, 150_000, 200_000)  # deliveries per second
QUICK_STEPS = (2_000, 5_000)


@dataclass
class Step:
    target_deliveries_per_s: int
    publishes_per_s: float
    published: int
    expected: int
    received: int
    delivered_fraction: float
    deliveries_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_s: float
    deliveries_per_server_cpu_s: float
    loadgen_cpu_s: float
    seconds: float


@dataclass
class Run:
    server: str
    version: str
    clients: int
    connected: int = 0
    idle_rss_before_kb: float = 0.0
    idle_rss_after_kb: float = 0.0
    idle_kb_per_connection: float = 0.0
    steps: list[Step] = field(default_factory=list)
    saturated_at: int | None = None
    error: str | None = None

    @property
    def best(self) -> Step | None:
        complete = [s for s in self.steps if s.delivered_fraction >= 0.99]
        return max(complete or self.steps, key=lambda s: s.deliveries_per_server_cpu_s, default=None)


@dataclass
class Server:
    name: str
    version: str
    pids: list[int]
    targets: list[Target]  # the clients are spread evenly over these
    publish: Callable[[aiohttp.ClientSession, int], Awaitable[None]]


class Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, text: str) -> None:
        line = f"[suite {time.monotonic() - self.started:6.1f}s] {text}"
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + line[:160])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


# -- servers ---------------------------------------------------------------------------------------------


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a ``--workers`` hub is a supervisor and its workers)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
    return out


@contextlib.asynccontextmanager
async def synchub(transport: str, args: argparse.Namespace) -> Any:
    """One hub, region eu, one product: on the embedded default (SQLite + in-process broker), or — for
    ``ws-2w`` — two ``--workers`` on PostgreSQL and Redis (every worker a node reading the stream)."""
    secret = secrets.token_urlsafe(32)
    admin = {"Authorization": f"Bearer {issue_token(secret, 'bench', ['admin'])}"}
    async with contextlib.AsyncExitStack() as stack:
        if transport.endswith("-2w"):
            database, prefix = await stack.enter_async_context(
                throwaway_postgres_and_redis(args.postgres_admin_url, args.redis_url)
            )
            extra: tuple[str, ...] = (
                "--redis-url",
                args.redis_url,
                "--redis-prefix",
                prefix,
                "--workers",
                "2",
            )
        else:
            database = str(Path(tempfile.mkdtemp(prefix="synchub-suite-")) / "hub.sqlite3")
            extra = ()
        base, pid = await stack.enter_async_context(hub_process(database, secret, "--region", "eu", *extra))
        async with aiohttp.ClientSession() as session:
            async with session.post(
                base + "/api/v1/warehouses", headers=admin, json={"id": "w1", "region": "eu", "name": "w1"}
            ) as r:
                assert r.status == 201, await r.text()
            async with session.post(
                base + "/api/v1/products", headers=admin, json={"sku": "SUITE-1", "name": "s", "price": "1"}
            ) as r:
                assert r.status == 201, await r.text()
                product = (await r.json())["id"]
        path = f"{base}/api/v1/products/{product}/inventory/w1/adjustments"
        port = int(base.rsplit(":", 1)[1])

        async def publish(session: aiohttp.ClientSession, seq: int) -> None:
            async with session.post(path, headers=admin, json={"delta": 1}) as r:
                await r.read()
                if r.status >= 300:
                    raise RuntimeError(f"adjustment answered {r.status}")

        ws = Target.synchub_ws("127.0.0.1", port, "inventory:eu")
        sse = Target.synchub_sse("127.0.0.1", port, "inventory:eu")
        targets = {"ws": [ws], "ws-2w": [ws], "sse": [sse], "mix": [ws, sse]}[transport]
        yield Server(f"synchub-{transport}", _synchub_version(), _process_tree(pid), targets, publish)


def _synchub_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("synchub")
    except PackageNotFoundError:
        return "source"


@contextlib.asynccontextmanager
async def peer(name: str) -> Any:
    async with start_peer(name, free_port()) as running:

        async def publish(session: aiohttp.ClientSession, seq: int) -> None:
            await running.publish(session, make_body(seq))

        yield Server(name, running.version, [running.pid], [Target.for_peer(running)], publish)


def open_server(name: str, args: argparse.Namespace) -> Any:
    if name.startswith("synchub-"):
        return synchub(name.removeprefix("synchub-"), args)
    return peer(name)


# -- measuring -------------------------------------------------------------------------------------------


def _rss_kb(pids: list[int]) -> float:
    return sum(rss_bytes(pid) for pid in pids) / 1024


async def publish_at(
    server: Server, session: aiohttp.ClientSession, rate: float, count: int, start_seq: int
) -> int:
    """Publish ``count`` times at ``rate`` per second (up to 32 in flight); returns how many succeeded."""
    gate = asyncio.Semaphore(32)
    ok = 0

    async def one(seq: int) -> None:
        nonlocal ok
        try:
            await server.publish(session, seq)
            ok += 1
        finally:
            gate.release()

    tasks = []
    started = time.perf_counter()
    for i in range(count):
        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        await gate.acquire()
        tasks.append(asyncio.create_task(one(start_seq + i)))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors and not ok:
        raise RuntimeError(f"every publish failed: {errors[0]!r}")
    return ok


async def measure(
    server: Server,
    gen: LoadGen,
    session: aiohttp.ClientSession,
    clients: int,
    args: argparse.Namespace,
    progress: Progress,
) -> Run:
    run = Run(server.name, server.version, clients)
    run.idle_rss_before_kb = _rss_kb(server.pids)
    share = [clients // len(server.targets)] * len(server.targets)
    share[0] += clients - sum(share)
    for target, n in zip(server.targets, share, strict=True):
        progress(f"{server.name}: opening {n:,} {target.kind} connections")
        run.connected += await gen.connect(target, n, timeout=args.connect_seconds)
    await asyncio.sleep(args.settle_seconds)  # let allocations settle before reading the idle memory
    run.idle_rss_after_kb = _rss_kb(server.pids)
    run.idle_kb_per_connection = (run.idle_rss_after_kb - run.idle_rss_before_kb) / max(1, run.connected)
    seq = 0
    for index, target_rate in enumerate(args.steps):
        rate = target_rate / clients
        count = max(10, math.ceil(rate * args.step_seconds))
        progress(
            f"{server.name} · {clients:,} clients · step {index + 1}/{len(args.steps)}: "
            f"{target_rate:,} deliveries/s ({rate:.1f} publishes/s × {count})"
        )
        await gen.reset()
        cpu_before = sum(cpu_seconds(pid) for pid in server.pids)
        started = time.perf_counter()
        published = await publish_at(server, session, rate, count, seq)
        seq += count
        expected = published * clients
        await gen.wait_received(expected, timeout=args.drain_seconds)
        seconds = time.perf_counter() - started
        server_cpu = sum(cpu_seconds(pid) for pid in server.pids) - cpu_before
        stats = await gen.collect()
        step = Step(
            target_deliveries_per_s=target_rate,
            publishes_per_s=rate,
            published=published,
            expected=expected,
            received=stats.received,
            delivered_fraction=stats.received / expected if expected else 0.0,
            deliveries_per_s=stats.received / seconds,
            p50_ms=stats.p50_ms,
            p99_ms=stats.p99_ms,
            max_ms=stats.max_ms,
            server_cpu_s=server_cpu,
            deliveries_per_server_cpu_s=stats.received / server_cpu if server_cpu > 0 else 0.0,
            loadgen_cpu_s=stats.cpu_s,
            seconds=seconds,
        )
        run.steps.append(step)
        # Saturated: deliveries lag (< 99% within the drain time, or under 90% of the rate asked for),
        # or latency left the bound.
        if (
            step.delivered_fraction < 0.99
            or step.deliveries_per_s < 0.9 * target_rate
            or step.p99_ms > args.max_p99_ms
        ):
            run.saturated_at = target_rate
            break
    await gen.disconnect()
    return run


# -- reporting -------------------------------------------------------------------------------------------


def markdown(runs: list[Run], meta: dict[str, Any]) -> str:
    out = [
        f"# synchub bench suite — {meta['started']}",
        "",
        f"{meta['machine']}; load generator: {meta['loadgen_workers']} processes. "
        "Deliveries per server CPU-second at each server's best complete step (≥ 99% delivered):",
        "",
        "| server | version | clients | best step deliveries/s | delivered | p50 ms | p99 ms | max ms "
        "| server CPU s | deliveries / server CPU s | load-gen CPU s | idle KB / conn | saturated at |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        if run.error is not None:
            out.append(
                f"| {run.server} | {run.version} | {run.clients:,} | — | — | — | — | — | — | — | — | — | "
                f"{run.error} |"
            )
            continue
        best = run.best
        if best is None:
            continue
        out.append(
            f"| {run.server} | {run.version} | {run.clients:,} | {best.deliveries_per_s:,.0f} | "
            f"{best.delivered_fraction:.1%} | {best.p50_ms:.1f} | {best.p99_ms:.1f} | {best.max_ms:.1f} | "
            f"{best.server_cpu_s:.2f} | {best.deliveries_per_server_cpu_s:,.0f} | {best.loadgen_cpu_s:.2f} | "
            f"{run.idle_kb_per_connection:.1f} | "
            f"{f'{run.saturated_at:,}/s' if run.saturated_at else 'not reached'} |"
        )
    out += [
        "",
        "Every step:",
        "",
        "| server | clients | target/s | publishes/s | delivered | deliveries/s | p50 ms | p99 ms | max ms "
        "| server CPU s | deliveries / server CPU s | load-gen CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for s in run.steps:
            out.append(
                f"| {run.server} | {run.clients:,} | {s.target_deliveries_per_s:,} | "
                f"{s.publishes_per_s:.1f} | "
                f"{s.delivered_fraction:.1%} | {s.deliveries_per_s:,.0f} | {s.p50_ms:.1f} | {s.p99_ms:.1f} | "
                f"{s.max_ms:.1f} | {s.server_cpu_s:.2f} | {s.deliveries_per_server_cpu_s:,.0f} | "
                f"{s.loadgen_cpu_s:.2f} |"
            )
    return "\n".join(out) + "\n"


def plots(runs: list[Run], stem: Path) -> list[Path]:
    """PNG plots beside the JSON; none (and a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in runs:
        if run.steps:
            ax.plot(
                [s.deliveries_per_s for s in run.steps],
                [s.p99_ms for s in run.steps],
                marker="o",
                label=f"{run.server} · {run.clients:,}",
            )
    ax.set_xlabel("deliveries per second")
    ax.set_ylabel("p99 publish→receive (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    ax.set_title("Latency against rate")
    path = stem.with_name(stem.name + "-latency.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    made.append(path)
    plt.close(fig)
    for metric, title, unit in (
        ("deliveries", "Deliveries per server CPU-second (best complete step)", "deliveries / CPU s"),
        ("memory", "Idle memory per connection", "KB per connection"),
    ):
        fig, ax = plt.subplots(figsize=(9, 5))
        labels, values = [], []
        for run in runs:
            best = run.best
            if run.error is not None or best is None:
                continue
            labels.append(f"{run.server}\n{run.clients:,}")
            values.append(
                best.deliveries_per_server_cpu_s if metric == "deliveries" else run.idle_kb_per_connection
            )
        ax.bar(range(len(values)), values)
        ax.set_xticks(range(len(values)), labels, fontsize="x-small", rotation=60)
        ax.set_ylabel(unit)
        ax.set_title(title)
        path = stem.with_name(f"{stem.name}-{metric}.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        made.append(path)
        plt.close(fig)
    return made


# -- main ------------------------------------------------------------------------------------------------


SECTIONS = ("throughput", "crossnode", "storm", "idle", "sync", "reviews")


@dataclass
class Results:
    """One run of the suite: each section's results (``None`` or empty when it was not selected)."""

    meta: dict[str, Any]
    runs: list[Run] = field(default_factory=list)  # throughput
    crossnode: CrossNode | None = None
    storm: Storm | None = None
    idle: list[IdleRun] = field(default_factory=list)
    sync: SyncRun | None = None
    reviews: ReviewsRun | None = None


async def throughput(args: argparse.Namespace, progress: Progress) -> list[Run]:
    """Each server and client count in turn: idle memory, then stepped publish rates."""
    runs: list[Run] = []
    async with (
        LoadGen(workers=args.loadgen_workers) as gen,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session,
    ):
        for name in args.servers:
            for clients in args.clients:
                try:
                    async with open_server(name, args) as server:
                        runs.append(await measure(server, gen, session, clients, args, progress))
                except PeerUnavailable as exc:
                    progress(f"{name}: unavailable — {exc}")
                    runs.append(Run(name, "—", clients, error=f"unavailable: {exc}"[:200]))
                    break  # no use trying the other client counts
                except RUN_FAILURES as exc:
                    progress(f"{name} · {clients:,} clients: failed — {exc!r}")
                    runs.append(Run(name, "—", clients, error=f"failed: {exc!r}"[:200]))
                    with contextlib.suppress(Exception):
                        await gen.disconnect()
    return runs


async def suite(args: argparse.Namespace) -> Results:
    from bench import crossnode, idle, reviews, storm, sync

    progress = Progress()
    results = Results(
        {
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "loadgen_workers": args.loadgen_workers,
            "sections": list(args.sections),
            "args": {k: v for k, v in vars(args).items() if k != "func"},
        }
    )
    try:
        if "throughput" in args.sections:
            results.runs = await throughput(args, progress)
        if "crossnode" in args.sections:
            results.crossnode = await crossnode.run(args, progress)
        if "storm" in args.sections:
            results.storm = await storm.run(args, progress)
        if "idle" in args.sections:
            results.idle = await idle.run(args, progress)
        if "sync" in args.sections:
            results.sync = await sync.run(args, progress)
        if "reviews" in args.sections:
            results.reviews = await reviews.run(args, progress)
    finally:
        progress.done()
    return results


def report(results: Results) -> tuple[str, dict[str, Any]]:
    """The run's Markdown and its JSON document."""
    from bench import crossnode, idle, reviews, storm, sync

    if results.runs:
        parts = [markdown(results.runs, results.meta)]
    else:
        parts = [f"# synchub bench suite — {results.meta['started']}\n\n{results.meta['machine']}.\n"]
    if results.crossnode is not None:
        parts.append(crossnode.markdown(results.crossnode))
    if results.storm is not None:
        parts.append(storm.markdown(results.storm))
    if results.idle:
        parts.append(idle.markdown(results.idle))
    if results.sync is not None:
        parts.append(sync.markdown(results.sync))
    if results.reviews is not None:
        parts.append(reviews.markdown(results.reviews))
    document = {
        "meta": results.meta,
        "runs": [asdict(run) for run in results.runs],
        "crossnode": None if results.crossnode is None else crossnode.as_dict(results.crossnode),
        "storm": None if results.storm is None else storm.as_dict(results.storm),
        "idle": idle.as_dict(results.idle),
        "sync": None if results.sync is None else sync.as_dict(results.sync),
        "reviews": None if results.reviews is None else reviews.as_dict(results.reviews),
    }
    return "\n".join(parts), document


def failures(results: Results) -> list[str]:
    """What fails the run: synchub not delivering everything at its first step on any transport it ran,
    in either cross-node path, or the storm not delivering every event exactly once; synchub not holding
    its idle connections, or a synchub sync configuration not acking and delivering every edit of its
    first step, or a reviews configuration's aggregate not exact. (Peers that fail are reported, not
    failed; latency targets are reported.)"""
    from bench import crossnode, idle, reviews, storm, sync

    found = [
        f"{run.server} · {run.clients:,}: "
        + (run.error or f"{run.steps[0].delivered_fraction:.2%} delivered at the first step")
        for run in results.runs
        if run.server.startswith("synchub")
        and (run.error or not run.steps or run.steps[0].delivered_fraction < 1.0)
    ]
    found += crossnode.failures(results.crossnode)
    found += storm.failures(results.storm)
    found += idle.failures(results.idle)
    found += sync.failures(results.sync)
    found += reviews.failures(results.reviews)
    return found


def main(argv: list[str]) -> int:
    from bench import crossnode, idle, reviews, storm, sync

    parser = argparse.ArgumentParser(
        prog="python -m bench suite",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke: every section at small sizes, under two minutes"
    )
    parser.add_argument(
        "--sections", help=f"comma-separated, of: {', '.join(SECTIONS)} (default: all of them)"
    )
    parser.add_argument(
        "--clients", help="throughput: comma-separated client counts (default 1000,10000,19000)"
    )
    parser.add_argument("--servers", help=f"throughput: comma-separated, of: {', '.join(ALL_SERVERS)}")
    parser.add_argument("--steps", help="throughput: comma-separated target deliveries per second")
    parser.add_argument("--step-seconds", type=float, default=None)
    parser.add_argument("--drain-seconds", type=float, default=None)
    parser.add_argument("--connect-seconds", type=float, default=120.0)
    parser.add_argument("--settle-seconds", type=float, default=None)
    parser.add_argument("--max-p99-ms", type=float, default=2_000.0, help="a step above this p99 saturates")
    parser.add_argument("--loadgen-workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/0", help="for synchub-ws-2w, crossnode"
    )
    parser.add_argument("--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    crossnode.add_arguments(parser)
    storm.add_arguments(parser)
    idle.add_arguments(parser)
    sync.add_arguments(parser)
    reviews.add_arguments(parser)
    args = parser.parse_args(argv)
    quick = args.quick
    args.sections = args.sections.split(",") if args.sections else list(SECTIONS)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    args.clients = (
        [int(x) for x in args.clients.split(",")]
        if args.clients
        else ([200] if quick else [1_000, 10_000, 19_000])
    )
    args.servers = args.servers.split(",") if args.servers else list(QUICK_SERVERS if quick else ALL_SERVERS)
    unknown = set(args.servers) - set(ALL_SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    args.steps = (
        [int(x) for x in args.steps.split(",")] if args.steps else list(QUICK_STEPS if quick else FULL_STEPS)
    )
    args.step_seconds = args.step_seconds or (2.0 if quick else 5.0)
    args.drain_seconds = args.drain_seconds or (10.0 if quick else 20.0)
    args.settle_seconds = args.settle_seconds if args.settle_seconds is not None else (0.5 if quick else 2.0)
    crossnode.finish_arguments(args)
    storm.finish_arguments(args)
    problem = (
        idle.finish_arguments(args, ALL_SERVERS, QUICK_SERVERS)
        or sync.finish_arguments(args)
        or reviews.finish_arguments(args)
    )
    if problem:
        parser.error(problem)

    try:
        import uvloop

        results = uvloop.run(suite(args))
    except ImportError:
        results = asyncio.run(suite(args))

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"suite-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if quick else ''}"
    table, document = report(results)
    stem.with_suffix(".md").write_text(table)
    stem.with_suffix(".json").write_text(json.dumps(document, indent=1, default=str))
    pictures = plots(results.runs, stem) if results.runs else []
    for extra in (
        crossnode.plot(results.crossnode, stem) if results.crossnode is not None else None,
        idle.plot(results.idle, stem),
        sync.plot(results.sync, stem),
    ):
        if extra is not None:
            pictures.append(extra)
    print(table)
    print(f"results: {stem}.json, {stem}.md" + "".join(f", {p.name}" for p in pictures))
    if not pictures and importlib.util.find_spec("matplotlib") is None:
        print("(no plots: matplotlib is not installed — pip install matplotlib)")

    found = failures(results)
    for failure in found:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":  # python -m bench.suite is python -m bench suite
    import sys

    sys.exit(main(sys.argv[1:]))
