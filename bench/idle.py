"""The suite's idle capacity: a server's resident memory with 0, 10,000 and 19,000 idle connections.

For each server (synchub over WebSocket and over SSE, and every peer of ``bench/peers`` — one that
cannot be installed or started is reported and skipped), one process is started, its resident memory
(all its processes, from /proc) read with no client, then after opening each count of idle clients
(subscribed, nothing published), after ``--idle-settle`` seconds: **KB per connection** = (RSS − RSS with
none) / connections. One server process may hold at most 20,000 open files, so 19,000 is the top count;
the load generator spreads the clients over several processes (each holds at most 15,000) and many
127.0.0.x source addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._hub import RUN_FAILURES
from bench.loadgen import LoadGen
from bench.peers.servers import PeerUnavailable

if TYPE_CHECKING:
    from bench.suite import Progress, Server

FULL_COUNTS = (10_000, 19_000)
QUICK_COUNTS = (200, 500)
SOURCES = 32  # loopback source addresses for the clients


@dataclass
class Level:
    connections: int
    rss_kb: float
    kb_per_connection: float  # (rss_kb − the RSS with no connection) / connections
    connect_s: float  # time to open the connections added at this level


@dataclass
class IdleRun:
    server: str
    version: str = "—"
    kind: str = ""  # the clients' wire: ws, sse, socketio
    rss_0_kb: float = 0.0
    levels: list[Level] = field(default_factory=list)
    error: str | None = None

    @property
    def top(self) -> Level | None:
        return self.levels[-1] if self.levels else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("idle section (memory per idle connection)")
    group.add_argument(
        "--idle-counts", help="comma-separated connection counts (10000,19000; quick: 200,500)"
    )
    group.add_argument(
        "--idle-servers",
        help="comma-separated (default: synchub-ws, synchub-sse and every peer; quick: the quick servers)",
    )
    group.add_argument("--idle-settle", type=float, help="seconds before reading the memory (2; quick: 0.5)")


def finish_arguments(
    args: argparse.Namespace, all_servers: tuple[str, ...], quick_servers: tuple[str, ...]
) -> str:
    """Resolve the defaults; an error message for an unknown server ("" if none)."""
    quick = args.quick
    args.idle_counts = (
        sorted(int(x) for x in args.idle_counts.split(",") if int(x) > 0)
        if args.idle_counts
        else list(QUICK_COUNTS if quick else FULL_COUNTS)
    )
    if args.idle_servers:
        args.idle_servers = args.idle_servers.split(",")
    elif quick:
        args.idle_servers = list(quick_servers)
    else:
        args.idle_servers = ["synchub-ws", "synchub-sse"] + [
            s for s in all_servers if not s.startswith("synchub")
        ]
    args.idle_settle = args.idle_settle if args.idle_settle is not None else (0.5 if quick else 2.0)
    unknown = set(args.idle_servers) - set(all_servers)
    mixed = [s for s in args.idle_servers if s == "synchub-mix"]
    if unknown:
        return f"unknown idle servers: {', '.join(sorted(unknown))}"
    if mixed:
        return "synchub-mix has two kinds of clients: measure synchub-ws and synchub-sse instead"
    return ""


async def run(args: argparse.Namespace, progress: Progress) -> list[IdleRun]:
    """Every server of ``--idle-servers`` in turn; one that fails is reported in its run's ``error``."""
    from bench.suite import open_server

    runs: list[IdleRun] = []
    top = max(args.idle_counts)
    async with LoadGen(workers=args.loadgen_workers, connections=top, sources=SOURCES) as gen:
        for name in args.idle_servers:
            run = IdleRun(name)
            runs.append(run)
            try:
                async with open_server(name, args) as server:
                    await _measure(server, run, gen, args, progress)
            except PeerUnavailable as exc:
                progress(f"idle · {name}: unavailable — {exc}")
                run.error = f"unavailable: {exc}"[:300]
            except RUN_FAILURES as exc:
                progress(f"idle · {name}: failed — {exc!r}")
                run.error = f"failed: {exc!r}"[:300]
            finally:
                with contextlib.suppress(Exception):
                    await gen.disconnect()
    return runs


async def _measure(
    server: Server, run: IdleRun, gen: LoadGen, args: argparse.Namespace, progress: Progress
) -> None:
    from bench.suite import _rss_kb

    run.version = server.version
    target = server.targets[0]
    run.kind = target.kind
    await asyncio.sleep(args.idle_settle)
    run.rss_0_kb = _rss_kb(server.pids)
    open_now = 0
    for count in args.idle_counts:
        progress(f"idle · {run.server}: opening {count - open_now:,} more {target.kind} connections")
        started = time.monotonic()
        open_now += await gen.connect(target, count - open_now, timeout=args.connect_seconds)
        connect_s = time.monotonic() - started
        await asyncio.sleep(args.idle_settle)
        rss = _rss_kb(server.pids)
        level = Level(open_now, rss, (rss - run.rss_0_kb) / open_now, connect_s)
        run.levels.append(level)
        progress(f"idle · {run.server}: {open_now:,} connections, {level.kb_per_connection:.1f} KB each")


def _cell(text: str, limit: int = 160) -> str:
    """An error in a table cell: one line, no column separator, shortened."""
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown(runs: list[IdleRun]) -> str:
    out = [
        "## Idle capacity (resident memory per idle connection)",
        "",
        "One server process each (all its processes for a multi-process server), idle clients subscribed "
        "and nothing published; KB / conn = (RSS − RSS with no connection) / connections. RSS is the "
        "process's own memory: the kernel's socket buffers are not in it.",
        "",
        "| server | version | clients | connections | RSS MB | KB / conn | connect s |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        if run.error is not None and not run.levels:
            out.append(f"| {run.server} | {run.version} | — | — | — | — | {_cell(run.error)} |")
            continue
        out.append(f"| {run.server} | {run.version} | {run.kind} | 0 | {run.rss_0_kb / 1024:.1f} | — | — |")
        for level in run.levels:
            out.append(
                f"| {run.server} | {run.version} | {run.kind} | {level.connections:,} | "
                f"{level.rss_kb / 1024:.1f} | {level.kb_per_connection:.1f} | {level.connect_s:.1f} |"
            )
        if run.error is not None:
            out.append(f"| {run.server} | {run.version} | {run.kind} | — | — | — | {_cell(run.error)} |")
    return "\n".join(out) + "\n"


def failures(runs: list[IdleRun]) -> list[str]:
    """synchub must hold every connection asked for (a peer's failure is reported, not failed)."""
    return [
        f"idle {run.server}: {run.error}" for run in runs if run.server.startswith("synchub") and run.error
    ]


def as_dict(runs: list[IdleRun]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(run) for run in runs]


def plot(runs: list[IdleRun], stem: Path) -> Path | None:
    """Grouped bars: KB per idle connection, per server, one bar per connection count."""
    measured = [run for run in runs if run.levels]
    if not measured:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    counts = sorted({level.connections for run in measured for level in run.levels})
    fig, ax = plt.subplots(figsize=(9, 5))
    width = 0.8 / max(1, len(counts))
    for i, count in enumerate(counts):
        xs, values = [], []
        for x, run in enumerate(measured):
            level = next((lv for lv in run.levels if lv.connections == count), None)
            if level is not None:
                xs.append(x - 0.4 + width * (i + 0.5))
                values.append(level.kb_per_connection)
        ax.bar(xs, values, width, label=f"{count:,} connections")
    ax.set_xticks(range(len(measured)), [run.server for run in measured], fontsize="small", rotation=30)
    ax.set_ylabel("KB per idle connection (RSS)")
    ax.set_title("Idle memory per connection")
    ax.legend(fontsize="small")
    path = stem.with_name(stem.name + "-idle.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
