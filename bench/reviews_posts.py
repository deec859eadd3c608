"""Review posts on one hot product, for ``python -m bench reviews`` (:mod:`bench.reviews` drives and
reports): a real hub process, HTTP clients posting, WebSocket subscribers on the product's channel.

Every post is a new author's (a token minted per post) with a unique text — a word made from the post's
number, written in letters: digits could read as a phone number to the screen — so that neither the
posting-rate rule (20 an hour per author) nor the duplicate-text rule holds it. The rating is drawn from
a fixed J-shaped distribution. A post's answer says whether the review was published or held; the
published ones are tallied into the histogram the product's aggregate must equal at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench._hub import RUN_FAILURES, admin_headers, hub_process, throwaway_postgres_and_redis
from bench.http_client import HttpConnection, HttpError, request_bytes
from bench.reviews_cpu import PostgresCpu, Sampler, cpu_spent, waits_share
from hub.auth import issue_token

_POST_TIMEOUT_S = 300  # (aiohttp's client's default: a hub that stops answering fails the run)
RATING_WEIGHTS = (12, 6, 10, 22, 50)  # % of reviews rated 1..5 (J-shaped, as shops see)
_WORDS = (
    "serum cream texture scent bottle pump skin face dry oily smooth soft light heavy sticky fresh "
    "gentle mild strong lasting absorbs quickly slowly morning evening night daily weekly price value "
    "worth cheap expensive size small large travel pack package arrived delivery fast late box glass "
    "plastic cap leaked broke fine perfect lovely nice decent okay poor awful love like hate prefer "
    "recommend return again reorder sister friend gift bought tried used week month year redness calm "
    "glow bright dull even tone spots lines wrinkles pores hydrating moisture balm oil water feels "
    "looks smells works helped worse better best favourite routine after before shower sun summer winter"
)
VOCABULARY = tuple(_WORDS.split())


def word_of(number: int, prefix: str = "") -> str:
    """``number`` written in letters (a unique word per number: no digits for the screen to read)."""
    letters = []
    while True:
        number, digit = divmod(number, 26)
        letters.append(chr(ord("a") + digit))
        if number == 0:
            break
    return prefix + "".join(reversed(letters))


def post_text(rng: random.Random, tag: str) -> str:
    """6–14 distinct vocabulary words around the post's own word ``tag``."""
    words = rng.sample(VOCABULARY, rng.randint(6, 14))
    words.insert(rng.randrange(len(words) + 1), tag)
    return " ".join(words).capitalize() + "."


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


# -- subscribers --------------------------------------------------------------------------------------


class Subscriber:
    """One WebSocket (``synchub.json``) on ``reviews:{region}:{product}``: when each review's
    ``review.published`` event arrived, and the newest ``rating.changed`` aggregate."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.arrivals: dict[str, float] = {}
        self.rating: dict[str, Any] | None = None
        self.rating_version = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, session: aiohttp.ClientSession, base: str, channel: str) -> Subscriber:
        ws = await session.ws_connect(base + "/api/v1/ws", protocols=("synchub.json",), heartbeat=None)
        await ws.send_str(orjson.dumps({"type": "subscribe", "id": 1, "channel": channel}).decode())
        reply = orjson.loads((await ws.receive(timeout=10)).data)
        if reply.get("type") != "subscribed":
            raise RuntimeError(f"subscribing to {channel} answered {reply}")
        subscriber = cls(ws)
        subscriber.task = asyncio.create_task(subscriber._read())
        return subscriber

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.perf_counter()
            message = orjson.loads(frame.data)
            if message.get("type") != "event":
                continue
            data = message["data"]
            if data.get("type") == "review.published":
                self.arrivals.setdefault(data["review"]["id"], now)
                self.changed.set()
            elif data.get("type") == "rating.changed" and data["version"] > self.rating_version:
                self.rating_version, self.rating = data["version"], data["rating"]
                self.changed.set()

    async def wait_for(self, ids: Sequence[str], deadline: float) -> None:
        while any(i not in self.arrivals for i in ids) and time.monotonic() < deadline:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))

    async def wait_for_count(self, count: int, deadline: float) -> None:
        """Until the newest rating.changed counts ``count`` reviews (its event follows the review's)."""
        while (self.rating or {}).get("count") != count and time.monotonic() < deadline:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))

    async def close(self) -> None:
        await self.ws.close()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await self.task


# -- posting ------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """One step's posts as they are answered."""

    sent: int = 0
    published: list[str] = field(default_factory=list)  # review ids
    held: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    last_answer: float = 0.0
    max_lag_ms: float = 0.0


class Poster:
    """Posts reviews of one product, each by a new author; keeps what it must compare at the end.

    Over keep-alive connections of the lean client (:mod:`bench.http_client`), one post in flight on
    each, opened as posts need them and kept: the hub answers the same requests as from aiohttp's
    client, which cost this process ~0.1 ms more CPU per post — on the cores the hub runs on."""

    def __init__(self, base: str, product: str, secret: str, seed: int) -> None:
        self.host, port = base.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.path = f"/api/v1/products/{product}/reviews"
        self.idle: list[HttpConnection] = []
        self.secret = secret
        self.rng = random.Random(seed)
        self.run = secrets.token_hex(3)
        self.seq = 0
        self.sent_at: dict[str, float] = {}
        self.histogram = [0, 0, 0, 0, 0]  # published posts by rating
        self.statuses: Counter[str] = Counter()

    async def post(self, tally: Tally) -> None:
        self.seq += 1
        seq, rating = self.seq, self.rng.choices(range(1, 6), RATING_WEIGHTS)[0]
        token = issue_token(self.secret, f"bench-{self.run}-{seq}", ["customer"])
        body = orjson.dumps({"rating": rating, "text": post_text(self.rng, word_of(seq, "rv"))})
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        request = request_bytes("POST", self.path, f"{self.host}:{self.port}", headers, body)
        tally.sent += 1
        started = time.perf_counter()
        connection = None
        try:
            async with asyncio.timeout(_POST_TIMEOUT_S):
                connection = self.idle.pop() if self.idle else await HttpConnection.open(self.host, self.port)
                response = await connection.send(request)
        except (HttpError, OSError, TimeoutError) as exc:
            if connection is not None:
                connection.close()
            tally.errors[type(exc).__name__] += 1
            return
        self.idle.append(connection)
        raw, status = response.body, response.status
        answered = time.perf_counter()
        tally.latencies_ms.append((answered - started) * 1000)
        tally.last_answer = max(tally.last_answer, answered)
        if status != 201:
            code = orjson.loads(raw).get("code", "") if raw.startswith(b"{") else ""
            tally.errors[f"{status} {code}".strip()] += 1
            return
        reply = orjson.loads(raw)
        self.statuses[reply["status"]] += 1
        if reply["status"] == "published":
            self.histogram[rating - 1] += 1
            self.sent_at[reply["id"]] = started
            tally.published.append(reply["id"])
        else:
            tally.held += 1

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()

    async def open_loop(self, rate: float, seconds: float, in_flight: int) -> Tally:
        """``rate`` posts a second for ``seconds``, at most ``in_flight`` unanswered (a post whose time
        has come waits for a free connection: its lag is recorded)."""
        tally, gate, tasks = Tally(), asyncio.Semaphore(in_flight), []
        count, started = max(1, round(rate * seconds)), time.perf_counter()

        async def one() -> None:
            try:
                await self.post(tally)
            finally:
                gate.release()

        for i in range(count):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            tally.max_lag_ms = max(tally.max_lag_ms, (time.perf_counter() - due) * 1000)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        return tally

    async def closed_loop(self, clients: int, seconds: float) -> Tally:
        """``clients`` posting back to back for ``seconds``: the most the hub answers."""
        tally = Tally()
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                await self.post(tally)

        await asyncio.gather(*(client() for _ in range(clients)))
        return tally


# -- one configuration ----------------------------------------------------------------------------


@dataclass
class PostStep:
    label: str  # "250/s" (offered, open loop) or "max" (closed loop)
    rate: int | None
    clients: int
    sent: int
    acked: int
    published: int
    held: int
    errors: int
    error_codes: dict[str, int]
    seconds: float  # the step's start to its last answer
    acked_per_s: float
    post_p50_ms: float
    post_p99_ms: float
    server_cpu_s: float
    posts_per_server_cpu_s: float
    db_cpu_s: float | None  # PostgreSQL's processes (None on SQLite, which runs in the hub)
    client_cpu_s: float
    events_expected: int  # published posts × subscribers
    events_delivered: int
    event_p50_ms: float  # the post's send → its review.published event at a subscriber
    event_p99_ms: float
    max_lag_ms: float  # open loop: the latest a post went out after its time (no free connection)
    db_waits: dict[str, float] = field(default_factory=dict)  # PostgreSQL: active backends' waits
    saturated: bool = False


@dataclass
class PostRun:
    config: str
    subscribers: int
    steps: list[PostStep] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)  # every post's answer, warm-up included
    expected: dict[str, Any] | None = None  # the aggregate of what was published
    stored: dict[str, Any] | None = None  # GET /rating at the end
    live: dict[str, Any] | None = None  # the subscribers' last rating.changed
    recount: dict[str, str] = field(default_factory=dict)  # the store's recount_ratings()
    exact: bool = False
    error: str | None = None

    @property
    def best(self) -> PostStep | None:
        return max(self.steps, key=lambda s: s.acked_per_s, default=None)


def hub_extra(config: str, redis_url: str, prefix: str) -> tuple[str, ...]:
    if config == "postgres-2w":
        return ("--redis-url", redis_url, "--redis-prefix", prefix, "--workers", "2")
    return ()


async def measure(
    label: str,
    rate: int | None,
    clients: int,
    work: Callable[[], Awaitable[Tally]],
    poster: Poster,
    subscribers: list[Subscriber],
    sampler: Sampler,
    drain_seconds: float,
) -> PostStep:
    """One step: the posts, then the wait until every subscriber has every published review's event
    (at most ``drain_seconds``); CPU from before the first post to the last event."""
    (hub0, db0), client0 = await sampler.sample(), time.process_time()
    started = time.perf_counter()
    watching = None
    if sampler.database is not None:
        sampler.database.waits.clear()
        watching = asyncio.create_task(sampler.database.watch())
    try:
        tally = await work()
    finally:
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
    deadline = time.monotonic() + drain_seconds
    for subscriber in subscribers:
        await subscriber.wait_for(tally.published, deadline)
    (hub1, db1), client1 = await sampler.sample(), time.process_time()
    server_cpu = cpu_spent(hub0, hub1)
    events = [
        (subscriber.arrivals[i] - poster.sent_at[i]) * 1000
        for subscriber in subscribers
        for i in tally.published
        if i in subscriber.arrivals
    ]
    acked = len(tally.published) + tally.held
    seconds = max(1e-9, tally.last_answer - started)
    return PostStep(
        label=label,
        rate=rate,
        clients=clients,
        sent=tally.sent,
        acked=acked,
        published=len(tally.published),
        held=tally.held,
        errors=sum(tally.errors.values()),
        error_codes=dict(tally.errors),
        seconds=seconds,
        acked_per_s=acked / seconds,
        post_p50_ms=percentile(tally.latencies_ms, 0.5),
        post_p99_ms=percentile(tally.latencies_ms, 0.99),
        server_cpu_s=server_cpu,
        posts_per_server_cpu_s=acked / server_cpu if server_cpu > 0 else 0.0,
        db_cpu_s=cpu_spent(db0, db1) if sampler.database is not None else None,
        client_cpu_s=client1 - client0,
        events_expected=len(tally.published) * len(subscribers),
        events_delivered=len(events),
        event_p50_ms=percentile(events, 0.5),
        event_p99_ms=percentile(events, 0.99),
        max_lag_ms=tally.max_lag_ms,
        db_waits=waits_share(sampler.database.waits) if sampler.database is not None else {},
    )


async def check_exact(
    run: PostRun, poster: Poster, session: aiohttp.ClientSession, base: str, product: str, url: str
) -> None:
    """The product's aggregate (GET /rating) against what was published, and the store's recount."""
    from storage.factory import open_store

    histogram = {str(n + 1): poster.histogram[n] for n in range(5)}
    run.expected = {"count": sum(poster.histogram), "histogram": histogram}
    async with session.get(f"{base}/api/v1/products/{product}/rating") as response:
        run.stored = (await response.json())["rating"]
    store = open_store(url, region="eu")
    await store.open()
    try:
        mismatched = await store.recount_ratings()
    finally:
        await store.close()
    run.recount = {k: f"stored {have}, recounted {want}" for k, (have, want) in mismatched.items()}
    assert run.stored is not None
    run.exact = (
        run.stored["count"] == run.expected["count"]
        and run.stored["histogram"] == histogram
        and not run.recount
    )


async def run_posts(config: str, args: Any, progress: Callable[[str], None]) -> PostRun:
    """One configuration: its hub, the product, the subscribers; a warm-up, the stepped offered rates
    until one saturates, the closed-loop step; then the exactness check."""
    run = PostRun(config, args.reviews_subscribers)
    secret = secrets.token_urlsafe(32)
    extra: tuple[str, ...] = ()
    try:
        async with contextlib.AsyncExitStack() as stack:
            if config == "sqlite":
                folder = tempfile.mkdtemp(prefix="synchub-reviews-")
                stack.callback(shutil.rmtree, folder, True)
                url = str(Path(folder) / "hub.sqlite3")
            else:
                url, prefix = await stack.enter_async_context(
                    throwaway_postgres_and_redis(args.postgres_admin_url, args.redis_url)
                )
                extra = hub_extra(config, args.redis_url, prefix)
            base, pid = await stack.enter_async_context(hub_process(url, secret, "--region", "eu", *extra))
            connector = aiohttp.TCPConnector(limit=args.reviews_clients)
            session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
            product = await create_product(session, base, secret, "REVIEWS-HOT")
            listen = await stack.enter_async_context(aiohttp.ClientSession())
            subscribers = []
            for _ in range(args.reviews_subscribers):
                subscriber = await Subscriber.open(listen, base, f"reviews:eu:{product}")
                stack.push_async_callback(subscriber.close)
                subscribers.append(subscriber)
            database = None
            if url.startswith("postgresql"):
                database = await stack.enter_async_context(PostgresCpu(url))
            sampler = Sampler(pid, database)
            poster = Poster(base, product, secret, seed=14)
            stack.callback(poster.close)
            clients, drain = args.reviews_clients, args.reviews_drain_seconds
            if args.reviews_warmup_seconds > 0:
                progress(f"posts {config}: warm-up, {args.reviews_warmup_seconds:g} s")
                warm = args.reviews_rates[0]
                await measure(
                    "warm-up",
                    warm,
                    clients,
                    partial(poster.open_loop, warm, args.reviews_warmup_seconds, clients),
                    poster,
                    subscribers,
                    sampler,
                    drain,
                )
            for rate in args.reviews_rates:
                progress(f"posts {config}: {rate:,} posts/s offered, {args.reviews_step_seconds:g} s")
                step = await measure(
                    f"{rate:,}/s",
                    rate,
                    clients,
                    partial(poster.open_loop, rate, args.reviews_step_seconds, clients),
                    poster,
                    subscribers,
                    sampler,
                    drain,
                )
                step.saturated = (
                    step.errors > 0
                    or step.acked_per_s < 0.9 * rate
                    or step.post_p99_ms > args.reviews_max_p99_ms
                    or step.events_delivered < step.events_expected
                )
                run.steps.append(step)
                if step.saturated:
                    break
            progress(f"posts {config}: closed loop, {clients} clients, {args.reviews_step_seconds:g} s")
            run.steps.append(
                await measure(
                    "max",
                    None,
                    clients,
                    partial(poster.closed_loop, clients, args.reviews_step_seconds),
                    poster,
                    subscribers,
                    sampler,
                    drain,
                )
            )
            run.statuses = dict(poster.statuses)
            deadline = time.monotonic() + drain
            for subscriber in subscribers:
                await subscriber.wait_for_count(sum(poster.histogram), deadline)
            run.live = subscribers[0].rating if subscribers else None
            await check_exact(run, poster, session, base, product, url)
    except RUN_FAILURES as exc:
        progress(f"posts {config}: failed — {exc!r}")
        run.error = repr(exc)[:300]
    return run


async def create_product(session: aiohttp.ClientSession, base: str, secret: str, sku: str) -> str:
    async with session.post(
        base + "/api/v1/products", headers=admin_headers(secret), json={"sku": sku, "name": sku, "price": "1"}
    ) as response:
        if response.status != 201:
            raise RuntimeError(f"creating the product answered {response.status}: {await response.text()}")
        return str((await response.json())["id"])
