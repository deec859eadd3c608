"""What a rate limit costs: a limit check in process and on Redis, and a request on a limited route with
the limits off, in process and on Redis.

  checks    µs per check of MemoryRateLimiter (one key; 10,000 keys in turn) and of RedisRateLimiter
            (one at a time: a round trip each; 64 in flight), in this process
  requests  ``GET /api/v1/warehouses`` (a read: limited) on a hub process started three ways —
            ``--rate-limits off``, on in process, on through Redis — with a read limit too high to
            reach: latency one request at a time (µs, p50 and p99), then ``--connections`` keep-alive
            connections for ``--seconds``: requests/s and the hub's CPU µs per request

  alternating  with ``--alternating SECONDS``: one hub process whose limits are switched on and off
            every 250 ms under load (bench/ratelimit_alternating.py): hub CPU µs per request in each
            setting, the same process and neighbours for both — the figure to go by on a busy machine

  interleaved  with ``--interleaved N``: hubs with limits off and on (in process) started side by side,
            loaded in turn for N rounds of 2 s each (alternating which goes first), or both at once
            each round with ``--together``: the medians of req/s and of hub CPU µs per request, and
            the round-by-round differences (median and quartiles) — with ``--together`` the fairest
            comparison on a shared machine, as both hubs see the same neighbours

Run: ``python -m bench ratelimit [--quick] [--alternating 30] [--interleaved 10 [--together] [--control]]
[--redis-url redis://127.0.0.1:6379/0]``.
Without a reachable Redis the Redis rows are skipped. Keys go under a fresh prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from bench._hub import cpu_seconds, hub_process
from bench.http_client import HttpConnection, request_bytes
from hub.ratelimit.limiter import RatePolicy
from hub.ratelimit.limiter_memory import MemoryRateLimiter
from hub.ratelimit.limiter_redis import RedisRateLimiter

POLICY = RatePolicy(1_000_000_000, 1.0, 1_000_000_000)  # never refuses: the cost, not the refusals
HIGH = "1000000/s:1000000"
PATH = "/api/v1/warehouses"


Timing = tuple[float, float]  # µs per call: wall clock, this process's CPU


async def _per_call(calls: int, call: Callable[[int], Awaitable[object]]) -> Timing:
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(calls):
        await call(i)
    return (time.perf_counter() - started) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6


async def _in_flight(calls: int, width: int, call: Callable[[int], Awaitable[object]]) -> Timing:
    async def lane(start: int) -> None:
        for i in range(start, calls, width):
            await call(i)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(lane(k) for k in range(width)))
    return (time.perf_counter() - started) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6


async def bench_checks(calls: int, redis_url: str | None, prefix: str) -> list[tuple[str, Timing]]:
    memory = MemoryRateLimiter()
    keys = [f"read:ip:10.0.{i // 256}.{i % 256}" for i in range(10_000)]
    rows = [
        ("memory, one key", await _per_call(calls, lambda _: memory.check("read:user:alice", POLICY))),
        ("memory, 10,000 keys", await _per_call(calls, lambda i: memory.check(keys[i % len(keys)], POLICY))),
    ]
    if redis_url:
        redis = RedisRateLimiter(redis_url, prefix=prefix)
        try:
            few = max(1000, calls // 50)
            await _per_call(100, lambda _: redis.check("read:user:warm", POLICY))
            rows.append(
                ("redis, one at a time", await _per_call(few, lambda _: redis.check("read:user:a", POLICY)))
            )
            rows.append(
                (
                    "redis, 64 in flight",
                    await _in_flight(few * 4, 64, lambda i: redis.check(keys[i % 100], POLICY)),
                )
            )
        finally:
            await redis.close()
    return rows


async def _latencies(host: str, port: int, count: int) -> list[float]:
    conn = await HttpConnection.open(host, port)
    request = request_bytes("GET", PATH, f"{host}:{port}", {})
    try:
        for _ in range(200):  # warm up
            await conn.send(request)
        took = []
        for _ in range(count):
            started = time.perf_counter()
            response = await conn.send(request)
            took.append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"{PATH} answered {response.status}")
        return took
    finally:
        conn.close()


async def _throughput(
    host: str,
    port: int,
    pid: int,
    connections: int,
    seconds: float,
    headers: Iterator[dict[str, str]] | None = None,
) -> tuple[float, float]:
    """``GET PATH`` on ``connections`` keep-alive connections for ``seconds``: requests/s and the hub's
    CPU µs per request. ``headers``: each request's own (bench/auth.py sends credentials), else none."""
    fixed = request_bytes("GET", PATH, f"{host}:{port}", {})
    conns = [await HttpConnection.open(host, port) for _ in range(connections)]
    done = 0
    stop = time.monotonic() + seconds

    async def lane(conn: HttpConnection) -> None:
        nonlocal done
        while time.monotonic() < stop:
            request = (
                fixed if headers is None else request_bytes("GET", PATH, f"{host}:{port}", next(headers))
            )
            response = await conn.send(request)
            if response.status != 200:
                raise RuntimeError(f"{PATH} answered {response.status}")
            done += 1

    cpu = cpu_seconds(pid)
    started = time.monotonic()
    try:
        await asyncio.gather(*(lane(conn) for conn in conns))
    finally:
        for conn in conns:
            conn.close()
    elapsed = time.monotonic() - started
    return done / elapsed, (cpu_seconds(pid) - cpu) / max(1, done) * 1e6


async def bench_requests(
    count: int, connections: int, seconds: float, redis_url: str | None, prefix: str
) -> list[tuple[str, float, float, float, float, float]]:
    setups: list[tuple[str, tuple[str, ...]]] = [
        ("limits off", ("--rate-limits=off",)),
        ("in process", ("--rate-limits=on", f"--rate-limit-read={HIGH}")),
    ]
    if redis_url:
        setups.append(
            (
                "redis",
                (
                    "--rate-limits=on",
                    f"--rate-limit-read={HIGH}",
                    "--redis-url",
                    redis_url,
                    "--redis-prefix",
                    prefix,
                ),
            )
        )
    rows = []
    secret = secrets.token_urlsafe(32)
    for name, flags in setups:
        with tempfile.TemporaryDirectory(prefix="synchub-bench-rl-") as folder:
            async with hub_process(str(Path(folder) / "hub.sqlite3"), secret, *flags) as (base, pid):
                host, port = base.removeprefix("http://").split(":")
                took = sorted(await _latencies(host, int(port), count))
                rate, cpu_us = await _throughput(host, int(port), pid, connections, seconds)
        mean = statistics.fmean(took) * 1e6
        p50 = took[len(took) // 2] * 1e6
        p99 = took[min(len(took) - 1, int(len(took) * 0.99))] * 1e6
        rows.append((name, mean, p50, p99, rate, cpu_us))
    return rows


async def bench_interleaved(
    rounds: int, connections: int, control: bool = False, together: bool = False
) -> dict[str, list[tuple[float, float]]]:
    """``control``: the second hub has its limits off too (an A/A run: how far two identical hubs differ
    on this machine now, the noise an off/on difference must be read against). ``together``: each
    round loads both hubs at once, so whatever else the machine runs weighs on both alike (a round's
    two figures are a pair: compare them round by round)."""
    from contextlib import AsyncExitStack

    setups = {
        "limits off": ("--rate-limits=off",),
        "limits off (control)" if control else "in process": (
            ("--rate-limits=off",) if control else ("--rate-limits=on", f"--rate-limit-read={HIGH}")
        ),
    }
    secret = secrets.token_urlsafe(32)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in setups}
    async with AsyncExitStack() as stack:
        hubs: dict[str, tuple[str, int, int]] = {}
        for name, flags in setups.items():
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="synchub-bench-rl-"))
            base, pid = await stack.enter_async_context(
                hub_process(str(Path(folder) / "hub.sqlite3"), secret, *flags)
            )
            address, number = base.removeprefix("http://").split(":")
            hubs[name] = (address, int(number), pid)
        for round_ in range(rounds):
            if together:
                both = await asyncio.gather(
                    *(_throughput(*hubs[name], connections, 2.0) for name in setups)
                )
                for name, figures in zip(setups, both, strict=True):
                    results[name].append(figures)
                continue
            order = list(setups) if round_ % 2 == 0 else list(setups)[::-1]
            for name in order:
                address, port, hub_pid = hubs[name]
                results[name].append(await _throughput(address, port, hub_pid, connections, 2.0))
    return results


def _quartiles(values: list[float], unit: str) -> str:
    if len(values) < 2:
        return f"{values[0]:+.1f}{unit}"
    low, mid, high = statistics.quantiles(values, n=4)
    return f"{mid:+.1f}{unit} ({low:+.1f}…{high:+.1f})"


async def _redis_reachable(url: str) -> bool:
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
        return True
    except Exception:
        return False
    finally:
        await client.aclose()


async def _delete_keys(url: str, prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def run(args: argparse.Namespace) -> None:
    quick = args.quick
    redis_url = args.redis_url if args.redis_url and await _redis_reachable(args.redis_url) else None
    prefix = f"synchub_bench_rl_{secrets.token_hex(4)}:"
    if args.alternating:
        from bench.ratelimit_alternating import PHASE_SECONDS, measure

        split = await measure(args.connections, args.alternating)
        print(
            f"\n## GET {PATH}, one hub, limits switched on and off every {PHASE_SECONDS * 1000:.0f} ms"
            f" for {args.alternating:g} s\n"
        )
        print("| limits | answers | hub CPU s | hub CPU µs/request |")
        print("|---|---|---|---|")
        print(f"| off | {split.answers_off:,} | {split.cpu_off:.2f} | {split.us_off:.1f} |")
        print(f"| on (in process) | {split.answers_on:,} | {split.cpu_on:.2f} | {split.us_on:.1f} |")
        print(
            f"\nthe check costs {split.us_on - split.us_off:+.1f} µs of hub CPU per request: a hub bound by"
            f" its core serves {100 * (split.us_off / split.us_on - 1):+.1f}% requests with its limits on"
        )
        return
    if args.interleaved:
        interleaved = await bench_interleaved(args.interleaved, args.connections, args.control, args.together)
        how = "loaded together" if args.together else "interleaved"
        print(f"\n## GET {PATH}, limits off and on, {args.interleaved} rounds of 2 s, {how}\n")
        print("| limits | median req/s | median hub CPU µs/request |")
        print("|---|---|---|")
        medians = []
        for name, runs in interleaved.items():
            rate = statistics.median(r for r, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            medians.append((rate, cpu))
            print(f"| {name} | {rate:,.0f} | {cpu:.0f} |")
        (base_rate, base_cpu), (rate, cpu) = medians
        print(
            f"\nsecond against first: {100 * (rate / base_rate - 1):+.1f}% req/s,"
            f" {cpu - base_cpu:+.0f} µs of hub CPU per request"
        )
        # Round by round: a hub bound by its one core serves 1 / (CPU per request), so the CPU ratio
        # is the ratio of what each could serve; req/s also depends on the load client's share.
        first_runs, second_runs = interleaved.values()
        pairs = list(zip(first_runs, second_runs, strict=True))
        rates = sorted(100 * (b[0] / a[0] - 1) for a, b in pairs)
        capacity = sorted(100 * (a[1] / b[1] - 1) for a, b in pairs)
        extra = sorted(b[1] - a[1] for a, b in pairs)
        print(
            f"round by round (median, quartiles): req/s {_quartiles(rates, '%')};"
            f" capacity (1 / CPU per request) {_quartiles(capacity, '%')};"
            f" hub CPU per request {_quartiles(extra, ' µs')}"
        )
        return
    try:
        checks = await bench_checks(20_000 if quick else 200_000, redis_url, prefix)
        print("\n## Limit checks (this process)\n")
        print("| limiter | µs per check | CPU µs per check (this process) |")
        print("|---|---|---|")
        for name, (wall, cpu) in checks:
            print(f"| {name} | {wall:.2f} | {cpu:.2f} |")
        if not redis_url:
            print(f"\n(Redis at {args.redis_url} not reachable: its rows are skipped)")
        rows = await bench_requests(
            500 if quick else 5000, args.connections, 1.0 if quick else args.seconds, redis_url, prefix
        )
        print(f"\n## GET {PATH} on a hub process (a read: limited when the limits are on)\n")
        print(
            f"| limits | mean µs | p50 µs | p99 µs | req/s, {args.connections} connections"
            " | hub CPU µs/request |"
        )
        print("|---|---|---|---|---|---|")
        for name, mean, p50, p99, rate, cpu_us in rows:
            print(f"| {name} | {mean:.0f} | {p50:.0f} | {p99:.0f} | {rate:,.0f} | {cpu_us:.0f} |")
    finally:
        if redis_url:
            await _delete_keys(redis_url, prefix)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ratelimit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer checks and requests (a smoke run)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="'' to skip Redis")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections for req/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the req/s run lasts")
    parser.add_argument(
        "--interleaved", type=int, default=0, help="only the interleaved off/on comparison, this many rounds"
    )
    parser.add_argument(
        "--alternating",
        type=float,
        default=0,
        metavar="SECONDS",
        help="only this: one hub whose limits switch on and off every 250 ms, loaded for SECONDS",
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="with --interleaved: load both hubs at once each round (fairest on a busy machine)",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="with --interleaved: both hubs with limits off (an A/A run: the machine's noise)",
    )
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(run(args))
    except ImportError:  # pragma: no cover
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":  # python -m bench.ratelimit is python -m bench ratelimit
    import sys

    sys.exit(main(sys.argv[1:]))
