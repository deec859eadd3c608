"""The suite's reconnect storm: every WebSocket client of a synchub hub dropped at once, all resuming.

N clients (default 10,000) subscribe to ``inventory:eu`` on one hub (the embedded default: SQLite and
the in-process broker) while the stock changes at a steady low rate. Once every client has an event
(so a position to resume from), the publishing goes on for ``--storm-before`` seconds; then every
socket is aborted at once (a TCP reset, no close handshake), and every client reconnects and
subscribes again with ``since`` = the position of the last event it parsed — while the publishing
continues, for ``--storm-after`` seconds after the last one is back.

Reported: how long until every client was resubscribed (its ``since`` accepted) and until every one had
caught up (had every event acknowledged before the drop), and, per client, the events **missed** and
**duplicated**: each event carries the stock row's ``version``, which the hub also answered each
adjustment with, so every client's received versions are compared with the published ones
(:meth:`bench.loadgen.LoadGen.sequences`). Both must be 0 for every client, and every client must have
received every published event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from bench._hub import RUN_FAILURES, adjust_at, admin_headers, cpu_seconds, hub_process, stock_product
from bench.loadgen import LoadGen, Target

if TYPE_CHECKING:
    from bench.suite import Progress


@dataclass
class Storm:
    clients: int
    publishes_per_s: float
    before_s: float
    after_s: float
    connected: int = 0
    published: int = 0
    published_before_drop: int = 0  # acknowledged before the drop (the first event included)
    dropped: int = 0  # connections open at the drop (all aborted)
    resubscribed_s: float | None = None  # drop → every client reconnected and resubscribed
    caught_up_s: float | None = None  # drop → every client had every event acknowledged before the drop
    expected: int = 0
    received: int = 0
    missed: int = 0
    clients_missing: int = 0
    max_missed_per_client: int = 0
    duplicated: int = 0
    clients_with_duplicates: int = 0
    max_duplicated_per_client: int = 0
    unexpected: int = 0
    ended: int = 0  # connections the hub closed after the reconnect
    p50_ms: float = 0.0  # commit → receive, every event of the run (replayed ones included)
    p99_ms: float = 0.0
    max_ms: float = 0.0
    server_cpu_s: float = 0.0
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.published > 0
            and self.received == self.expected
            and self.missed == self.duplicated == self.unexpected == 0
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("storm section (reconnect storm, synchub WebSocket)")
    group.add_argument("--storm-clients", type=int, help="clients dropped at once (10000; quick: 300)")
    group.add_argument("--storm-rate", type=float, help="stock changes per second (5; quick: 10)")
    group.add_argument("--storm-before", type=float, help="seconds of changes before the drop (5; quick: 2)")
    group.add_argument("--storm-after", type=float, help="seconds of changes once all are back (5; quick: 2)")


def finish_arguments(args: argparse.Namespace) -> None:
    quick = args.quick
    args.storm_clients = args.storm_clients or (300 if quick else 10_000)
    args.storm_rate = args.storm_rate or (10.0 if quick else 5.0)
    args.storm_before = args.storm_before if args.storm_before is not None else (2.0 if quick else 5.0)
    args.storm_after = args.storm_after if args.storm_after is not None else (2.0 if quick else 5.0)


async def _wait_caught_up(gen: LoadGen, threshold: int, timeout: float) -> bool:  # noqa: ASYNC109
    """Poll until every connection has received at least ``threshold`` events since the reset."""
    deadline = time.monotonic() + timeout
    while True:
        stats = await gen.collect()
        if stats.connections and stats.min_per_connection >= threshold:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)


async def run(args: argparse.Namespace, progress: Progress) -> Storm:
    """The storm; a failure (the hub, the connections, a timeout) is reported in ``error``."""
    result = Storm(args.storm_clients, args.storm_rate, args.storm_before, args.storm_after)
    try:
        await _run(args, progress, result)
    except RUN_FAILURES as exc:
        progress(f"storm: failed — {exc!r}")
        result.error = f"failed: {exc!r}"[:400]
    return result


async def _run(args: argparse.Namespace, progress: Progress, result: Storm) -> None:
    n = result.clients
    secret = secrets.token_urlsafe(32)
    admin = admin_headers(secret)
    started = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        # Entered first, so removed last: after the hub has stopped.
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="synchub-storm-"))
        database = str(Path(directory) / "hub.sqlite3")
        base, pid = await stack.enter_async_context(hub_process(database, secret, "--region", "eu"))
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        )
        url = await stock_product(session, base, admin, "STORM-1")
        port = int(base.rsplit(":", 1)[1])
        target = dataclasses.replace(Target.synchub_ws("127.0.0.1", port), sequence=b"version")
        gen = await stack.enter_async_context(LoadGen(workers=args.loadgen_workers, connections=n))
        progress(f"storm: opening {n:,} WebSocket connections")
        result.connected = await gen.connect(target, n, timeout=args.connect_seconds)
        await gen.reset()
        cpu_before = cpu_seconds(pid)

        # One event first, to every client: each then has a position to resume from.
        versions: list[int] = []
        await adjust_at(session, url, admin, 1.0, count=1, versions=versions)
        if await gen.wait_received(n, timeout=args.drain_seconds) < n:
            raise RuntimeError("not every client received the first event")

        stop = asyncio.Event()
        publisher = asyncio.create_task(
            adjust_at(session, url, admin, args.storm_rate, stop=stop, versions=versions)
        )
        try:
            progress(f"storm: {n:,} clients, {args.storm_rate:g} changes/s for {args.storm_before:g} s")
            await asyncio.sleep(args.storm_before)
            result.published_before_drop = len(versions)
            progress(f"storm: dropping {n:,} connections at once (publishing goes on)")
            dropped_at = time.monotonic()
            result.dropped = await gen.disconnect(abort=True)
            await gen.connect(target, n, timeout=args.connect_seconds, resume=True)
            back_at = time.monotonic()
            result.resubscribed_s = back_at - dropped_at
            progress(f"storm: all {n:,} resubscribed after {result.resubscribed_s:.2f} s; catching up")
            if await _wait_caught_up(gen, result.published_before_drop, args.drain_seconds):
                result.caught_up_s = time.monotonic() - dropped_at
            await asyncio.sleep(max(0.0, args.storm_after - (time.monotonic() - back_at)))
        finally:
            stop.set()
            await publisher
        result.published = len(versions)
        result.expected = n * result.published
        await gen.wait_received(result.expected, timeout=args.drain_seconds)
        await gen.wait_idle(0.3, timeout=2.0)  # a duplicate would arrive after the count was reached
        result.server_cpu_s = cpu_seconds(pid) - cpu_before
        stats = await gen.collect()
        sequences = await gen.sequences(versions)
        await gen.disconnect()
    summary = sequences.summary()
    result.received = stats.received
    result.ended = stats.ended
    result.p50_ms, result.p99_ms, result.max_ms = stats.p50_ms, stats.p99_ms, stats.max_ms
    for key in (
        "missed",
        "clients_missing",
        "max_missed_per_client",
        "duplicated",
        "clients_with_duplicates",
        "max_duplicated_per_client",
        "unexpected",
    ):
        setattr(result, key, summary[key])
    if summary["clients"] != n:
        result.error = f"sequence numbers of {summary['clients']} clients, not {n}"
    result.seconds = time.perf_counter() - started


def _seconds(value: float | None) -> str:
    return "not within the drain time" if value is None else f"{value:.2f} s"


def markdown(storm: Storm) -> str:
    out = [
        "## Reconnect storm (synchub WebSocket, embedded hub)",
        "",
        f"{storm.clients:,} clients on `inventory:eu`, {storm.publishes_per_s:g} stock changes/s for "
        f"{storm.before_s:g} s, then every socket aborted at once; each reconnected and resumed from the "
        f"last position it had while the changes went on ({storm.after_s:g} s more once all were back). "
        "Missed and duplicated compare each client's received `version`s with the published ones.",
        "",
    ]
    if storm.error is not None:
        return "\n".join([*out, f"Failed: {storm.error}"]) + "\n"
    out += [
        "| clients | dropped | published | all resubscribed after | all caught up after | delivered "
        "| missed (clients) | duplicated (clients) | unexpected | p99 ms | max ms | hub CPU s | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {storm.clients:,} | {storm.dropped:,} | {storm.published:,} | {_seconds(storm.resubscribed_s)} | "
        f"{_seconds(storm.caught_up_s)} | {storm.received:,} of {storm.expected:,} | "
        f"{storm.missed:,} ({storm.clients_missing:,}) | {storm.duplicated:,} "
        f"({storm.clients_with_duplicates:,}) | {storm.unexpected:,} | {storm.p99_ms:.1f} | "
        f"{storm.max_ms:.1f} | {storm.server_cpu_s:.2f} | {'ok' if storm.ok else 'FAILED'} |",
        "",
        "Latency is commit → receive over the whole run, the events replayed after the drop included.",
    ]
    return "\n".join(out) + "\n"


def failures(storm: Storm | None) -> list[str]:
    if storm is None or storm.ok:
        return []
    if storm.error is not None:
        return [f"storm: {storm.error}"]
    return [
        f"storm: {storm.received:,} of {storm.expected:,} delivered, {storm.missed} missed, "
        f"{storm.duplicated} duplicated, {storm.unexpected} unexpected"
    ]


def as_dict(storm: Storm) -> dict[str, Any]:
    return {**dataclasses.asdict(storm), "ok": storm.ok}
