"""``python -m bench sync``: cart edits between the two devices of each user, synchub beside Hocuspocus.

U users (``--users``), each with two devices on one cart, each device its own WebSocket. Every device
edits its user's cart — a mix of 50% "add 1–3 units", 30% "set the quantity to 1–9", 20% "remove a
line the cart has" (an add when it has none) over ``--skus`` catalog SKUs — at stepped total rates
(``--rates``, edits per second over all devices, each step ``--step-seconds`` long), open loop: an
edit goes out when its time comes, whatever is still unanswered. Configurations (``--configs``):

- ``synchub-sqlite``: one ``synchub serve`` on the embedded default (SQLite, ``synchronous=FULL``);
- ``synchub-pg-redis``: two ``synchub serve`` nodes on one throwaway PostgreSQL database and Redis key
  prefix, same region; each user's first device on node A, the second on node B;
- ``hocuspocus``: ``bench/peers/hocuspocus_server.js`` (Hocuspocus 3.4 with its SQLite extension),
  driven by ``bench/peers/hocuspocus_client.js``, the cart a ``Y.Map`` sku → quantity.

A synchub device speaks ``synchub.msgpack`` (``--json``: ``synchub.json``) with a customer token:
``sync`` (which creates the cart), ``subscribe`` to ``cart:<id>``, then one ``push`` per edit, the
delta from :class:`crdt.cart.Cart` (a replica id per device). Its "ack" is the hub's ``ack``, sent
after the durable commit; a delivery is the ``cart.delta`` event carrying the other device's
``mutation_id``. A Hocuspocus device's "ack" is the server's SyncStatus, sent once the update is
applied in memory (persistence is debounced: see ``hocuspocus_server.js``); a delivery is the other
device's update broadcast to it (``hocuspocus_client.js`` says how edits are matched).

Per configuration and step: acked edits per second (acked / time from the step's start to the last
ack), acked edits per server CPU-second (the server processes' CPU time from /proc during the step;
PostgreSQL's and Redis's own CPU is not counted), push → ack and push → other-device latency p50/p99
(send time to the other device's receipt, both clocks in one client process), TCP bytes per edit (what
every device's socket wrote and read during the step, divided by the edits), errors and undelivered
edits. A step that leaves edits unacknowledged or undelivered after ``--drain-seconds``, falls under
90% of its rate, or has a delivery p99 above ``--max-p99-ms`` ends the configuration (saturated).

The load clients are separate processes (synchub's: :mod:`bench.sync_client`, run as ``--worker``, on
uvloop; one per ``--client-procs``, each with its share of the users), driven over stdin/stdout with
one JSON command a line — ``setup``, ``step`` and ``close`` — the same commands for both clients.
Everything binds 127.0.0.1, every loop is bounded, and every process and database the bench starts, it
stops.
Results: a Markdown table on stdout, and JSON and Markdown files in ``bench/results/`` (ignored by git).

Run: ``python -m bench sync [--quick] [--configs synchub-sqlite,synchub-pg-redis,hocuspocus]
[--users 100] [--rates 250,500,1000,2000,5000] [--step-seconds 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench._hub import (
    RUN_FAILURES,
    admin_headers,
    cpu_seconds,
    free_port,
    hub_process,
    throwaway_postgres_and_redis,
)
from bench.sync_client import worker_main

PEERS = Path(__file__).resolve().parent / "peers"
RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = ("synchub-sqlite", "synchub-pg-redis", "hocuspocus")
RATES = (250, 500, 1000, 2000, 5000)
QUICK_RATES = (100, 200)


# -- driving a run ---------------------------------------------------------------------------------------


class _Client:
    """One load-client process (synchub's worker or the Node client), driven by JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, *argv: str) -> AsyncIterator[_Client]:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,  # a step's answer holds its latencies
        )
        try:
            yield cls(proc)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(OSError):
                    assert proc.stdin is not None
                    proc.stdin.close()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

    async def call(self, cmd: dict[str, Any], seconds: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps(cmd) + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), seconds)
        if not line:
            raise RuntimeError(f"the load client exited ({self.proc.returncode}) during {cmd['cmd']}")
        answer: dict[str, Any] = orjson.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"the load client failed {cmd['cmd']}: {answer.get('error')}")
        return answer


@dataclass
class Step:
    rate: int
    sent: int
    acked: int
    errors: int
    error_codes: dict[str, int]
    delivered: int
    expected_deliveries: int
    undelivered: int
    not_broadcast: int  # Hocuspocus: deletes of what the other device had just deleted (no broadcast)
    acked_per_s: float
    server_cpu_s: float
    acked_per_server_cpu_s: float
    ack_p50_ms: float
    ack_p99_ms: float
    delivery_p50_ms: float
    delivery_p99_ms: float
    delivery_max_ms: float
    bytes_per_edit: float
    client_cpu_s: float
    max_send_lag_ms: float
    seconds: float
    complete: bool  # every edit acked and every broadcast one delivered, no error
    saturated: bool = False  # not complete, under 90% of the rate, or p99 above the bound


@dataclass
class Config:
    name: str
    version: str
    durability: str
    users: int
    steps: list[Step] = field(default_factory=list)
    saturated_at: int | None = None
    error: str | None = None

    def at(self, rate: int) -> Step | None:
        return next((s for s in self.steps if s.rate == rate), None)

    @property
    def best(self) -> Step | None:
        """The fastest step that kept up."""
        return max((s for s in self.steps if not s.saturated), key=lambda s: s.acked_per_s, default=None)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


def combine(rate: int, answers: list[dict[str, Any]], server_cpu: float, seconds: float) -> Step:
    """One step's figures from every client process's answer."""
    total = {k: sum(a[k] for a in answers) for k in ("sent", "acked", "errors", "delivered", "lost")}
    codes: Counter[str] = Counter()
    for a in answers:
        codes.update(a["error_codes"])
    ack_ms = [v for a in answers for v in a["ack_ms"]]
    delivery_ms = [v for a in answers for v in a["delivery_ms"]]
    acked_s = max(a["acked_s"] for a in answers)
    expected = sum(a["expected_deliveries"] for a in answers)
    acked_per_s = total["acked"] / acked_s if acked_s > 0 else 0.0
    complete = total["acked"] == total["sent"] and total["errors"] == 0 and total["delivered"] >= expected
    return Step(
        rate=rate,
        sent=total["sent"],
        acked=total["acked"],
        errors=total["errors"],
        error_codes=dict(codes),
        delivered=total["delivered"],
        expected_deliveries=expected,
        undelivered=total["lost"],
        not_broadcast=sum(a["noops"] for a in answers),
        acked_per_s=acked_per_s,
        server_cpu_s=server_cpu,
        acked_per_server_cpu_s=total["acked"] / server_cpu if server_cpu > 0 else 0.0,
        ack_p50_ms=percentile(ack_ms, 0.50),
        ack_p99_ms=percentile(ack_ms, 0.99),
        delivery_p50_ms=percentile(delivery_ms, 0.50),
        delivery_p99_ms=percentile(delivery_ms, 0.99),
        delivery_max_ms=max(delivery_ms, default=0.0),
        bytes_per_edit=sum(a["bytes_in"] + a["bytes_out"] for a in answers) / max(1, total["sent"]),
        client_cpu_s=sum(a["client_cpu_s"] for a in answers),
        max_send_lag_ms=max(a["max_send_lag_ms"] for a in answers),
        seconds=seconds,
        complete=complete,
    )


def _shares(items: list[Any], parts: int) -> list[list[Any]]:
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


async def _steps(
    config: Config, clients: list[_Client], pids: list[int], args: argparse.Namespace, progress: Any
) -> None:
    """The stepped rates, each client process with its share, until one saturates — after a warm-up
    at the first rate that is not measured (a server's connection pools fill, statements get prepared,
    caches warm: on two nodes with PostgreSQL the first seconds' acks waited up to 0.5 s for that)."""
    if args.sync_warmup_seconds > 0:
        progress(f"{config.name}: warm-up, {args.sync_warmup_seconds:g} s at {args.sync_rates[0]:,} edits/s")
        share = args.sync_rates[0] / len(clients)
        cmd = {"cmd": "step", "seconds": args.sync_warmup_seconds, "drain": args.sync_drain_seconds}
        limit = args.sync_warmup_seconds + args.sync_drain_seconds + 30
        await asyncio.gather(
            *(c.call({**cmd, "rate": share, "seed": -1 - n}, limit) for n, c in enumerate(clients))
        )
    for index, rate in enumerate(args.sync_rates):
        progress(f"{config.name}: step {index + 1}/{len(args.sync_rates)}, {rate:,} edits/s")
        share = rate / len(clients)
        cmd = {"cmd": "step", "seconds": args.sync_step_seconds, "drain": args.sync_drain_seconds}
        cpu0 = sum(cpu_seconds(pid) for pid in pids)
        started = time.perf_counter()
        limit = args.sync_step_seconds + args.sync_drain_seconds + 30
        answers = await asyncio.gather(
            *(c.call({**cmd, "rate": share, "seed": 1000 * index + n}, limit) for n, c in enumerate(clients))
        )
        seconds = time.perf_counter() - started
        step = combine(rate, list(answers), sum(cpu_seconds(pid) for pid in pids) - cpu0, seconds)
        step.saturated = (
            not step.complete or step.acked_per_s < 0.9 * rate or step.delivery_p99_ms > args.sync_max_p99_ms
        )
        config.steps.append(step)
        if step.saturated:
            config.saturated_at = rate
            return


async def _create_products(session: aiohttp.ClientSession, base: str, secret: str, count: int) -> list[str]:
    admin = admin_headers(secret)
    skus = [f"SYNC-{i:03d}" for i in range(count)]
    for sku in skus:
        async with session.post(
            base + "/api/v1/products", headers=admin, json={"sku": sku, "name": sku, "price": "1"}
        ) as r:
            if r.status != 201:
                raise RuntimeError(f"creating product {sku} answered {r.status}: {(await r.text())[:300]}")
    return skus


def _synchub_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"synchub {version('synchub')}"
    except PackageNotFoundError:
        return "synchub (source)"


async def run_synchub(name: str, args: argparse.Namespace, progress: Any) -> Config:
    durability = (
        "ack after the commit (SQLite WAL, synchronous=FULL)"
        if name == "synchub-sqlite"
        else "ack after the commit (PostgreSQL, synchronous_commit as configured)"
    )
    config = Config(name, _synchub_version(), durability, args.sync_users)
    secret = secrets.token_urlsafe(32)
    async with contextlib.AsyncExitStack() as stack:
        if name == "synchub-sqlite":
            folder = tempfile.mkdtemp(prefix="synchub-sync-")
            stack.callback(shutil.rmtree, folder, True)
            base, pid = await stack.enter_async_context(
                hub_process(str(Path(folder) / "hub.sqlite3"), secret, "--region", "eu")
            )
            bases, pids = [base, base], [pid]
        else:
            database, prefix = await stack.enter_async_context(
                throwaway_postgres_and_redis(args.postgres_admin_url, args.redis_url)
            )
            extra = ("--region", "eu", "--redis-url", args.redis_url, "--redis-prefix", prefix)
            # One after the other: the first applies the schema migrations to the new database.
            base_a, pid_a = await stack.enter_async_context(
                hub_process(database, secret, "--node-id", "sync-a", *extra)
            )
            base_b, pid_b = await stack.enter_async_context(
                hub_process(database, secret, "--node-id", "sync-b", *extra)
            )
            bases, pids = [base_a, base_b], [pid_a, pid_b]
        async with aiohttp.ClientSession() as session:
            skus = await _create_products(session, bases[0], secret, args.sync_skus)
        from hub.auth import issue_token

        targets = [["127.0.0.1", int(b.rsplit(":", 1)[1])] for b in bases]
        users = [
            {
                "user": u,
                "token": issue_token(secret, f"sync-user-{u}", ["customer"]),
                "cart": str(uuid.uuid4()),
                "targets": targets,
            }
            for u in range(args.sync_users)
        ]
        replicas = secrets.token_hex(4)  # in every replica id of this run
        clients = []
        for share in _shares(users, args.sync_client_procs):
            client = await stack.enter_async_context(
                _Client.start(sys.executable, "-m", "bench", "sync", "--worker")
            )
            clients.append(client)
            setup = {
                "cmd": "setup",
                "users": share,
                "skus": skus,
                "binary": not args.sync_json,
                "run": replicas,
            }
            await client.call(setup, 120)
        progress(f"{name}: {2 * args.sync_users:,} devices connected and synced")
        await _steps(config, clients, pids, args, progress)
    return config


async def run_hocuspocus(args: argparse.Namespace, progress: Any) -> Config:
    from bench.peers.servers import start_peer

    durability = "ack when applied in memory; stored debounced (2 s after the last change, 10 s at most)"
    config = Config("hocuspocus", "", durability, args.sync_users)
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed")
    async with contextlib.AsyncExitStack() as stack:
        peer = await stack.enter_async_context(start_peer("hocuspocus", free_port()))
        config.version = peer.version
        skus = [f"SYNC-{i:03d}" for i in range(args.sync_skus)]
        names = [f"cart-{uuid.uuid4()}" for _ in range(args.sync_users)]
        clients = []
        for share in _shares(names, args.sync_client_procs):
            client = await stack.enter_async_context(_Client.start(node, str(PEERS / "hocuspocus_client.js")))
            clients.append(client)
            url = f"ws://127.0.0.1:{peer.port}"
            await client.call({"cmd": "setup", "url": url, "users": share, "skus": skus}, 120)
        progress(f"hocuspocus: {2 * args.sync_users:,} devices connected and synced")
        await _steps(config, clients, [peer.pid], args, progress)
    return config


async def run_all(args: argparse.Namespace, progress: Any) -> list[Config]:
    from bench.peers.servers import PeerUnavailable

    skipped: tuple[type[BaseException], ...] = (*RUN_FAILURES, PeerUnavailable)
    configs = []
    for name in args.sync_configs:
        try:
            if name == "hocuspocus":
                configs.append(await run_hocuspocus(args, progress))
            else:
                configs.append(await run_synchub(name, args, progress))
        except skipped as exc:
            progress(f"{name}: failed — {exc!r}")
            configs.append(Config(name, "—", "—", args.sync_users, error=f"failed: {exc!r}"[:400]))
    return configs


# -- reporting -------------------------------------------------------------------------------------------


def markdown(run: SyncRun) -> str:
    configs, meta = run.configs, run.meta
    out = [
        f"## Cart sync — {meta['started']}",
        "",
        f"{meta['machine']}; {meta['users']:,} users × 2 devices, {meta['skus']} SKUs, "
        f"{meta['step_seconds']:g} s steps, {meta['frames']} frames for synchub.",
        "",
        "| config | ack means | version |",
        "|---|---|---|",
    ]
    out += [f"| {c.name} | {c.durability} | {c.version} |" for c in configs]
    out += [
        "",
        "| config | edits/s asked | sent | acked/s | acked / server CPU s | server CPU s | ack p50 / p99 ms "
        "| device→device p50 / p99 / max ms | bytes / edit | errors | undelivered | client CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        if c.error is not None:
            out.append(f"| {c.name} | — | — | — | — | — | — | — | — | {c.error} | — | — |")
            continue
        for s in c.steps:
            errors = f"{s.errors}" + (f" {s.error_codes}" if s.error_codes else "")
            undelivered = f"{s.undelivered}"
            if s.not_broadcast:
                undelivered += f" (+{s.not_broadcast} not broadcast)"
            mark = " (saturated)" if s.saturated else ""
            out.append(
                f"| {c.name} | {s.rate:,}{mark} | {s.sent:,} | {s.acked_per_s:,.0f} | "
                f"{s.acked_per_server_cpu_s:,.0f} | {s.server_cpu_s:.2f} | "
                f"{s.ack_p50_ms:.1f} / {s.ack_p99_ms:.1f} | "
                f"{s.delivery_p50_ms:.1f} / {s.delivery_p99_ms:.1f} / {s.delivery_max_ms:.1f} | "
                f"{s.bytes_per_edit:.0f} | {errors} | {undelivered} | {s.client_cpu_s:.2f} |"
            )
    out += ["", *targets(configs)]
    return "\n".join(out) + "\n"


def targets(configs: list[Config]) -> list[str]:
    """The issue's three targets, said plainly (only where the run has the figures)."""
    by = {c.name: c for c in configs if c.error is None}
    lines = []
    sqlite, hocus = by.get("synchub-sqlite"), by.get("hocuspocus")
    if sqlite is not None and hocus is not None:
        common = [
            (s, h)
            for s in sqlite.steps
            if (h := hocus.at(s.rate)) is not None and not s.saturated and not h.saturated
        ]
        if common:
            ratios = [s.acked_per_server_cpu_s / h.acked_per_server_cpu_s for s, h in common]
            met = all(r >= 2.0 for r in ratios)
            lines.append(
                "- Acked edits per server CPU-second, synchub-sqlite / Hocuspocus: "
                + ", ".join(f"{s.rate:,}/s {r:.2f}×" for (s, _), r in zip(common, ratios, strict=True))
                + f" (target ≥ 2× at every rate both kept up with: {'met' if met else 'not met'})."
            )
    if hocus is not None:
        for c in (by.get("synchub-sqlite"), by.get("synchub-pg-redis")):
            if c is None:
                continue
            pairs = [(h, c.at(h.rate)) for h in hocus.steps if not h.saturated]
            cells = [
                f"{h.rate:,}/s {s.delivery_p99_ms:.1f} vs {h.delivery_p99_ms:.1f}"
                if s is not None
                else f"{h.rate:,}/s —"
                for h, s in pairs
            ]
            met = bool(pairs) and all(
                s is not None and not s.saturated and s.delivery_p99_ms <= h.delivery_p99_ms for h, s in pairs
            )
            if pairs:
                lines.append(
                    f"- Device→device p99 ms, {c.name} vs Hocuspocus: {', '.join(cells)} "
                    "(target at or below at every rate Hocuspocus keeps up with: "
                    f"{'met' if met else 'not met'})."
                )
    if sqlite is not None:
        best = sqlite.best
        top = 0.0 if best is None else best.acked_per_s
        lines.append(
            "- synchub-sqlite, one hub process, durable commits: best step kept up with, "
            f"{top:,.0f} acked pushes/s "
            f"(target ≥ 5,000: {'met' if top >= 5000 else 'not met'}"
            + ("" if sqlite.saturated_at is None else f"; saturated at {sqlite.saturated_at:,}/s")
            + ")."
        )
    return lines


# -- main ------------------------------------------------------------------------------------------------


class _Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        sys.stderr.write(f"[sync {time.monotonic() - self.started:6.1f}s] {text}\n")
        sys.stderr.flush()


@dataclass
class SyncRun:
    meta: dict[str, Any]
    configs: list[Config]


async def run(args: argparse.Namespace, progress: Any) -> SyncRun:
    """Every configuration asked for (``args.sync_*``, see :func:`finish_arguments`); a configuration
    that fails is reported in its ``error`` and the next one runs."""
    meta = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "users": args.sync_users,
        "skus": args.sync_skus,
        "step_seconds": args.sync_step_seconds,
        "frames": "JSON" if args.sync_json else "MessagePack",
    }
    return SyncRun(meta, await run_all(args, progress))


def plot(run: SyncRun | None, stem: Path) -> Path | None:
    """Two panels per configuration against the rate asked: acked edits per server CPU-second, and
    device→device p99 (log scale). None when nothing was measured or matplotlib is not installed."""
    measured = [config for config in (run.configs if run is not None else []) if config.steps]
    if not measured:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (per_cpu, p99) = plt.subplots(1, 2, figsize=(12, 5))
    for config in measured:
        rates = [step.rate for step in config.steps]
        per_cpu.plot(rates, [s.acked_per_server_cpu_s for s in config.steps], marker="o", label=config.name)
        p99.plot(rates, [s.delivery_p99_ms for s in config.steps], marker="o", label=config.name)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    rates = sorted({step.rate for config in measured for step in config.steps})
    p99.set_yscale("log")
    p99.yaxis.set_major_formatter(ScalarFormatter())
    for ax, title, unit in (
        (per_cpu, "Acked edits per server CPU-second", "acked / CPU s"),
        (p99, "Device→device p99", "ms"),
    ):
        ax.set_xscale("log")
        ax.set_xticks(rates, [f"{rate:,}" for rate in rates])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("edits per second asked")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend(fontsize="small")
    path = stem.with_name(stem.name + "-sync.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def failures(run: SyncRun | None) -> list[str]:
    """What fails a run: a synchub configuration that failed, or whose first step did not ack and
    deliver every edit. (Hocuspocus failing is reported, not failed; the targets are reported.)"""
    if run is None:
        return []
    return [
        f"sync {c.name}: {c.error or 'the first step did not ack and deliver every edit'}"
        for c in run.configs
        if c.name.startswith("synchub") and (c.error or not c.steps or not c.steps[0].complete)
    ]


def as_dict(run: SyncRun) -> dict[str, Any]:
    return {"meta": run.meta, "configs": [asdict(c) for c in run.configs], "targets": targets(run.configs)}


# -- options: alone (python -m bench sync) and as a section of python -m bench suite -------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options of this section (the suite has --quick, --redis-url, --postgres-admin-url)."""
    group = parser.add_argument_group("sync section (cart edits between two devices, beside Hocuspocus)")
    group.add_argument(
        "--sync-configs", help=f"comma-separated, of: {', '.join(CONFIGS)} (all; quick: synchub-sqlite)"
    )
    group.add_argument("--sync-users", type=int, help="users, each with 2 devices (100; quick: 10)")
    group.add_argument("--sync-rates", help="total edits per second (250,500,1000,2000,5000; quick: 100,200)")
    group.add_argument("--sync-step-seconds", type=float, help="seconds of edits per step (4; quick: 1)")
    group.add_argument("--sync-client-procs", type=int, default=1, help="load-client processes")
    group.add_argument(
        "--sync-warmup-seconds", type=float, help="an unmeasured step at the first rate first (2; quick: 0)"
    )


def finish_arguments(
    args: argparse.Namespace, quick_configs: Sequence[str] = ("synchub-sqlite",)
) -> str | None:
    """Defaults for what was not given; a problem with what was, or None."""
    quick = args.quick
    configs = args.sync_configs.split(",") if args.sync_configs else list(quick_configs if quick else CONFIGS)
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        return f"unknown sync configs: {', '.join(sorted(unknown))}"
    args.sync_configs = configs
    args.sync_users = args.sync_users or (10 if quick else 100)
    rates = args.sync_rates
    args.sync_rates = [int(r) for r in rates.split(",")] if rates else list(QUICK_RATES if quick else RATES)
    args.sync_step_seconds = args.sync_step_seconds or (1.0 if quick else 4.0)
    warmup = getattr(args, "sync_warmup_seconds", None)
    args.sync_warmup_seconds = (0.0 if quick else 2.0) if warmup is None else warmup
    args.sync_drain_seconds = getattr(args, "sync_drain_seconds", None) or (5.0 if quick else 10.0)
    args.sync_skus = getattr(args, "sync_skus", 20)
    args.sync_json = getattr(args, "sync_json", False)
    args.sync_max_p99_ms = getattr(args, "sync_max_p99_ms", 1000.0)
    if min(args.sync_users, args.sync_skus, args.sync_client_procs, *args.sync_rates) <= 0:
        return "users, SKUs, client processes and rates must be positive"
    return None


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench sync", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke: 10 users, 100 and 200 edits/s, 1 s steps"
    )
    parser.add_argument(
        "--configs", dest="sync_configs", help=f"comma-separated, of: {', '.join(CONFIGS)} (all)"
    )
    parser.add_argument(
        "--users", dest="sync_users", type=int, help="users, each with 2 devices (100; quick: 10)"
    )
    parser.add_argument("--rates", dest="sync_rates", help="total edits per second (250,500,1000,2000,5000)")
    parser.add_argument(
        "--step-seconds", dest="sync_step_seconds", type=float, help="seconds of edits per step (4; quick: 1)"
    )
    parser.add_argument(
        "--warmup-seconds",
        dest="sync_warmup_seconds",
        type=float,
        help="an unmeasured step at the first rate before the measured ones (2; quick: 0)",
    )
    parser.add_argument(
        "--drain-seconds",
        dest="sync_drain_seconds",
        type=float,
        help="wait for acks, deliveries (10; quick: 5)",
    )
    parser.add_argument(
        "--skus", dest="sync_skus", type=int, default=20, help="catalog SKUs the edits pick from"
    )
    parser.add_argument(
        "--client-procs", dest="sync_client_procs", type=int, default=1, help="load-client processes"
    )
    parser.add_argument(
        "--json", dest="sync_json", action="store_true", help="synchub.json frames, not msgpack"
    )
    parser.add_argument(
        "--max-p99-ms",
        dest="sync_max_p99_ms",
        type=float,
        default=1000.0,
        help="a step above this p99 saturates",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    problem = finish_arguments(args, quick_configs=CONFIGS)
    if problem:
        parser.error(problem)
    return args


def main(argv: Sequence[str]) -> int:
    if list(argv[:1]) == ["--worker"]:
        _run(worker_main())
        return 0
    args = parse(argv)
    result: SyncRun = _run(run(args, _Progress()))
    result.meta["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    table = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"sync-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}"
    stem.with_suffix(".md").write_text(table)
    stem.with_suffix(".json").write_text(json.dumps(as_dict(result), indent=1))
    picture = plot(result, stem)
    print(table)
    print(f"results: {stem}.json, {stem}.md" + (f", {picture.name}" if picture is not None else ""))
    found = failures(result)
    for failure in found:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if found else 0


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":  # python -m bench.sync is python -m bench sync
    import sys

    sys.exit(main(sys.argv[1:]))
