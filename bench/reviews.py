"""``python -m bench reviews``: product reviews (issue 14) — posts on one hot product, and listings of a
product with 100,000 reviews.

**Posts** (``--configs``, default ``postgres,sqlite``; also ``postgres-2w``: ``serve --workers 2`` on
PostgreSQL and Redis). One hub process on a throwaway PostgreSQL database (or an SQLite file), one
product, ``--subscribers`` WebSockets on ``reviews:eu:{product}``; HTTP clients (aiohttp, keep-alive,
at most ``--clients`` in flight) post reviews of that one product — each by a new author with a unique
text, so that neither the posting-rate nor the duplicate-text rule holds it — at stepped offered rates
(``--rates``, open loop, ``--step-seconds`` each, after a ``--warmup-seconds`` warm-up), until a step
saturates (an error, under 90% of the rate answered, post p99 above ``--max-p99-ms``, or an event not
delivered within ``--drain-seconds``); then a closed-loop step (every client posting back to back: the
most the hub answers). Per step: posts answered per second, published and held, post latency p50/p99,
the hub's CPU seconds (/proc, all its processes) and **posts per server CPU-second**, PostgreSQL's CPU
seconds and what its backends waited for, and the post → ``review.published`` event latency p50/p99 at
the subscribers (one clock: the bench's). At the end, **exactness**: the product's aggregate (``GET
/rating``) must equal the count and histogram of the posts answered ``published``, and the store's
``recount_ratings()`` must find nothing; "exact: yes/no", and the run fails if not.

**Listing** (``--listing``, default ``postgres,sqlite``): ``--count`` published reviews of one product
written straight into the database, then every listing case over real HTTP, one request at a time,
``--requests`` rounds, cases interleaved: p50/p99/max; the issue's target is p99 ≤ 20 ms. A case that
misses gets its statement and plan printed (EXPLAIN ANALYZE on PostgreSQL, EXPLAIN QUERY PLAN on
SQLite; ``--explain-all`` for every case). :mod:`bench.reviews_listing` says how the reviews are made.

Everything binds 127.0.0.1; every hub, database and file the bench makes, it removes. Results: Markdown
on stdout, JSON and Markdown in ``bench/results/`` (ignored by git).

Run: ``python -m bench reviews [--quick] [--parts posts,listing] [--configs postgres,sqlite]
[--rates 50,100,250,500,1000] [--count 100000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.reviews_listing import TARGET_P99_MS, Listing, run_listing
from bench.reviews_posts import PostRun, run_posts

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("posts", "listing")
CONFIGS = ("postgres", "sqlite", "postgres-2w")
BACKENDS = ("postgres", "sqlite")
RATES = (50, 100, 250, 500, 1000)
QUICK_RATES = (25, 50)
TARGET_POSTS_PER_S = 1000


@dataclass
class ReviewsRun:
    meta: dict[str, Any]
    posts: list[PostRun] = field(default_factory=list)
    listings: list[Listing] = field(default_factory=list)


async def run(args: argparse.Namespace, progress: Any) -> ReviewsRun:
    """Every part asked for (``args.reviews_*``, see :func:`finish_arguments`)."""
    result = ReviewsRun(
        {
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        }
    )
    if "posts" in args.reviews_parts:
        for config in args.reviews_configs:
            result.posts.append(await run_posts(config, args, progress))
    if "listing" in args.reviews_parts:
        for backend in args.reviews_listing:
            result.listings.append(await run_listing(backend, args, progress))
    return result


# -- reporting -------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:,.1f}"


def posts_markdown(runs: list[PostRun], meta: dict[str, Any]) -> list[str]:
    out = [
        f"## Review posts on one hot product — {meta['started']}",
        "",
        f'{meta["machine"]}. Each post a new author\'s; "max" is the closed-loop step (every client '
        "posting back to back). Server CPU: the hub's processes; db CPU: PostgreSQL's processes for "
        "its database; event: the post's send → its review.published at a subscriber.",
        "",
        "| config | offered | clients | answered/s | published / held | errors | post p50 / p99 ms "
        "| server CPU s | **posts / server CPU s** | db CPU s | event p50 / p99 ms | events delivered "
        "| db waits (share of samples) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if r.error is not None:
            out.append(f"| {r.config} | — | — | — | — | {r.error} | — | — | — | — | — | — | — |")
            continue
        for s in r.steps:
            errors = f"{s.errors}" + (f" {s.error_codes}" if s.error_codes else "")
            waits = ", ".join(f"{k} {v:.0%}" for k, v in s.db_waits.items()) or "—"
            db = "—" if s.db_cpu_s is None else f"{s.db_cpu_s:.2f}"
            mark = " (saturated)" if s.saturated else ""
            out.append(
                f"| {r.config} | {s.label}{mark} | {s.clients} | {s.acked_per_s:,.0f} | "
                f"{s.published:,} / {s.held:,} | {errors} | {_ms(s.post_p50_ms)} / {_ms(s.post_p99_ms)} | "
                f"{s.server_cpu_s:.2f} | {s.posts_per_server_cpu_s:,.0f} | {db} | "
                f"{_ms(s.event_p50_ms)} / {_ms(s.event_p99_ms)} | {s.events_delivered:,} / "
                f"{s.events_expected:,} | {waits} |"
            )
    out.append("")
    for r in runs:
        if r.error is not None:
            out.append(f"- {r.config}: exact: no (failed: {r.error})")
            continue
        statuses = ", ".join(f"{v:,} {k}" for k, v in sorted(r.statuses.items())) or "none"
        live = "—" if r.live is None else f"count {r.live['count']:,}"
        stored = (
            "—" if r.stored is None else f"count {r.stored['count']:,}, histogram {r.stored['histogram']}"
        )
        recount = "nothing" if not r.recount else "; ".join(f"{k}: {v}" for k, v in r.recount.items())
        out.append(
            f"- {r.config}: posts answered {statuses}; aggregate {stored}; the subscribers' last "
            f"rating.changed {live}; recount_ratings() found {recount} — exact: {'yes' if r.exact else 'no'}"
        )
    return out


def listing_markdown(listings: list[Listing]) -> list[str]:
    out: list[str] = []
    for listing in listings:
        out += [
            "",
            f"## Listing one product's {listing.reviews:,} reviews — {listing.backend}",
            "",
            f"Seeded in {listing.seed_seconds:.1f} s; {listing.requests} requests per case, one at a "
            f"time, cases interleaved. Target: p99 ≤ {TARGET_P99_MS:g} ms.",
            "",
            "| case | items | p50 ms | p99 ms | max ms | p99 ≤ 20 ms |",
            "|---|---|---|---|---|---|",
        ]
        if listing.error is not None:
            out.append(f"| failed: {listing.error} | — | — | — | — | — |")
            continue
        for c in listing.cases:
            out.append(
                f"| {c.label} | {c.items} | {_ms(c.p50_ms)} | {_ms(c.p99_ms)} | {_ms(c.max_ms)} | "
                f"{'yes' if c.meets else '**no**'} |"
            )
        for c in listing.cases:
            if c.plan:
                out += ["", f"Plan of `{c.label}` ({listing.backend}):", "", "```", *c.plan, "```"]
    return out


def targets(result: ReviewsRun) -> list[str]:
    lines = []
    pg = next((r for r in result.posts if r.config == "postgres" and r.error is None), None)
    if pg is not None and pg.best is not None:
        best = pg.best
        met = best.acked_per_s >= TARGET_POSTS_PER_S and pg.exact
        lines.append(
            f"- ≥ {TARGET_POSTS_PER_S:,} review posts/s on one hot product with exact aggregates on "
            f"PostgreSQL: {best.acked_per_s:,.0f}/s at best ({best.label}), exact: "
            f"{'yes' if pg.exact else 'no'} — {'met' if met else 'not met'}."
        )
    for listing in result.listings:
        if listing.error is None and listing.cases:
            missed = [c.label for c in listing.cases if not c.meets]
            lines.append(
                f"- Listing p99 ≤ {TARGET_P99_MS:g} ms at {listing.reviews:,} reviews, {listing.backend}: "
                + ("met by every case." if not missed else f"not met by {', '.join(missed)}.")
            )
    return lines


def markdown(result: ReviewsRun) -> str:
    parts = posts_markdown(result.posts, result.meta) if result.posts else []
    parts += listing_markdown(result.listings)
    parts += ["", "## Targets", "", *targets(result)]
    exact = all(r.exact for r in result.posts)
    if result.posts:
        parts += ["", f"exact: {'yes' if exact else 'no'}"]
    return "\n".join(parts).lstrip("\n") + "\n"


def failures(result: ReviewsRun | None) -> list[str]:
    """What fails a run: a posts configuration that failed or whose aggregate is not exact, a listing
    that failed. (Speed targets are reported, not failed.)"""
    if result is None:
        return []
    found = [
        f"reviews posts {r.config}: {r.error or 'the aggregate is not exact'}"
        for r in result.posts
        if not r.exact
    ]
    found += [f"reviews listing {x.backend}: {x.error}" for x in result.listings if x.error is not None]
    return found


def as_dict(result: ReviewsRun) -> dict[str, Any]:
    return {
        "meta": result.meta,
        "posts": [asdict(r) for r in result.posts],
        "listings": [asdict(x) for x in result.listings],
        "targets": targets(result),
    }


# -- options: alone (python -m bench reviews) and as a section of python -m bench suite -----------------


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "--reviews-") -> None:
    """This bench's options; the suite adds them with the ``--reviews-`` prefix (it has --quick,
    --redis-url and --postgres-admin-url)."""
    group = parser.add_argument_group("reviews (posts on one hot product, listings of 100,000)")

    def option(name: str, **kw: Any) -> None:
        group.add_argument(prefix + name, dest="reviews_" + name.replace("-", "_"), **kw)

    option("parts", help=f"comma-separated, of: {', '.join(PARTS)} (all)")
    option("configs", help=f"posts: comma-separated, of: {', '.join(CONFIGS)} (postgres,sqlite)")
    option("rates", help="posts: offered posts/s, stepped (50,100,250,500,1000; quick: 25,50)")
    option("step-seconds", type=float, help="posts: seconds per step (4; quick: 1)")
    option("warmup-seconds", type=float, help="posts: an unmeasured step first (2; quick: 0)")
    option("clients", type=int, help="posts: HTTP connections, posts in flight at most (32; quick: 8)")
    option("subscribers", type=int, help="posts: WebSockets on the product's channel (2; quick: 1)")
    option("drain-seconds", type=float, help="posts: wait for events after a step (10; quick: 5)")
    option("max-p99-ms", type=float, default=1000.0, help="posts: a step above this p99 saturates")
    option("listing", help=f"listing: comma-separated, of: {', '.join(BACKENDS)} (both)")
    option("count", type=int, help="listing: reviews of the product (100000; quick: 2000)")
    option("requests", type=int, help="listing: requests per case (300; quick: 20)")
    option("deep", help="listing: deep pages' depths, newest first, ×100 (10000,50000; quick: 500)")
    option("explain-all", action="store_true", help="listing: print every case's plan")


def _names(raw: str | None, default: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    names = raw.split(",") if raw else list(default)
    unknown = set(names) - set(allowed)
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(sorted(unknown))}")
    return names


def finish_arguments(args: argparse.Namespace, quick_parts: Sequence[str] = PARTS) -> str | None:
    """Defaults for what was not given; a problem with what was, or None."""
    quick = args.quick
    try:
        args.reviews_parts = _names(args.reviews_parts, quick_parts if quick else PARTS, PARTS, "parts")
        args.reviews_configs = _names(args.reviews_configs, ("postgres", "sqlite"), CONFIGS, "configs")
        args.reviews_listing = _names(args.reviews_listing, BACKENDS, BACKENDS, "listing backends")
    except ValueError as exc:
        return str(exc)
    rates = args.reviews_rates
    args.reviews_rates = (
        [int(r) for r in rates.split(",")] if rates else list(QUICK_RATES if quick else RATES)
    )
    args.reviews_step_seconds = args.reviews_step_seconds or (1.0 if quick else 4.0)
    warmup = args.reviews_warmup_seconds
    args.reviews_warmup_seconds = (0.0 if quick else 2.0) if warmup is None else warmup
    args.reviews_clients = args.reviews_clients or (8 if quick else 32)
    subscribers = args.reviews_subscribers
    args.reviews_subscribers = (1 if quick else 2) if subscribers is None else subscribers
    args.reviews_drain_seconds = args.reviews_drain_seconds or (5.0 if quick else 10.0)
    args.reviews_count = args.reviews_count or (2_000 if quick else 100_000)
    args.reviews_requests = args.reviews_requests or (20 if quick else 300)
    deep = args.reviews_deep
    args.reviews_deep = [int(d) for d in deep.split(",")] if deep else ([500] if quick else [10_000, 50_000])
    if min(args.reviews_clients, args.reviews_count, args.reviews_requests, *args.reviews_rates) <= 0:
        return "clients, reviews, requests and rates must be positive"
    if any(d <= 0 or d % 100 or d >= args.reviews_count for d in args.reviews_deep):
        return "deep pages' depths are multiples of 100 below the count of reviews"
    return None


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench reviews",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke: 25 and 50 posts/s for 1 s, 2,000 reviews listed"
    )
    add_arguments(parser, prefix="--")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    problem = finish_arguments(args)
    if problem:
        parser.error(problem)
    return args


def _progress(text: str) -> None:
    sys.stderr.write(f"[reviews {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args, _progress))
    else:
        result = uvloop.run(run(args, _progress))
    result.meta["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    table = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"reviews-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}"
    stem.with_suffix(".md").write_text(table)
    stem.with_suffix(".json").write_text(json.dumps(as_dict(result), indent=1))
    print(table)
    print(f"results: {stem}.json, {stem}.md")
    found = failures(result)
    for failure in found:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":  # python -m bench.reviews is python -m bench reviews
    import sys

    sys.exit(main(sys.argv[1:]))
