"""Shared fixtures: real stores (SQLite file, PostgreSQL over TCP) and a real hub on a real socket.

PostgreSQL and Redis are required, never skipped: ``scripts/test`` makes sure they run and hands us a
throwaway database in SYNCHUB_TEST_POSTGRES_URL. Run without it, the suite creates (and drops) its
own throwaway database on the local server.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tests import native_modules

# Before anything imports crdt (the hub does, through its cart routes and the sync engine's events).
CRDT_BUILD = native_modules.select()

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
import pytest  # noqa: E402
from aiohttp import web  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from hub.app import create_app  # noqa: E402
from hub.auth import issue_token  # noqa: E402
from hub.ratelimit.limiter import RatePolicy  # noqa: E402
from hub.settings import Settings  # noqa: E402
from storage.factory import open_store  # noqa: E402
from storage.models import InventoryDelta, NewProduct, OutboxEntry, Warehouse  # noqa: E402
from storage.sql import SqlStore  # noqa: E402

# The loop the tests run on: uvloop, as `synchub serve` runs (hub/cli.py); SYNCHUB_TEST_LOOP=asyncio for
# the standard library's (where uvloop is not installed). They differ where it shows: uvloop's
# transports are not asyncio.Transport instances, its reads come in other sizes.
TEST_LOOP = os.environ.get("SYNCHUB_TEST_LOOP", "uvloop")
if TEST_LOOP not in ("uvloop", "asyncio"):
    raise RuntimeError(f"SYNCHUB_TEST_LOOP is uvloop or asyncio, not {TEST_LOOP!r}")


def pytest_report_header() -> str:
    return f"crdt build: {CRDT_BUILD}; event loop: {TEST_LOOP}"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    if TEST_LOOP == "uvloop":
        import uvloop

        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


BACKENDS = ["sqlite", "postgres"]
JWT_SECRET = "test-secret-" + secrets.token_hex(16)
TABLES = (
    "outbox, idempotency_keys, reservation_lines, reservations, stock, warehouses, products,"
    " cart_mutations, carts, replicas, user_events, api_keys"
    ", audit_log, user_profiles"
    ", webhook_endpoints, webhook_positions, webhook_leases, webhook_deliveries, webhook_attempts"
    ", schools, school_api_keys, school_assets, parts_requests, parts_request_lines, parts_backorders"
    ", personalization_users, behaviour_events, co_viewed, co_carted, user_preferences, trending"
)


def _admin_url() -> str:
    return os.environ.get("SYNCHUB_TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    given = os.environ.get("SYNCHUB_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    name = f"synchub_test_{os.getpid()}_{secrets.token_hex(3)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(_admin_url())
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        await admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is required for the test suite and is not reachable: {exc}")
    base = _admin_url().rsplit("/", 1)[0]
    yield f"{base}/{name}"
    await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def pg(postgres_url: str) -> str:
    """The session's PostgreSQL database, emptied (for tests that start hub processes on it)."""
    await reset_postgres(postgres_url)
    return postgres_url


def redis_url() -> str:
    return os.environ.get("SYNCHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def fresh_redis_prefix() -> str:
    """A key prefix no other test (nor any other run sharing the server) uses."""
    return f"{os.environ.get('SYNCHUB_TEST_REDIS_PREFIX', 'synchub_test:')}{secrets.token_hex(4)}:"


async def delete_redis_keys(url: str, prefix: str) -> None:
    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def require_services() -> bool:
    """CI (scripts/test sets SYNCHUB_TEST_REQUIRE_SERVICES=1): a service that cannot start is a failure."""
    return os.environ.get("SYNCHUB_TEST_REQUIRE_SERVICES") == "1"


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """A Redis Cluster of 3 masters and 3 replicas on loopback (bench/redis_cluster.py: LocalCluster), started
    by the first test that asks and stopped at the end of the session. Tests that break it mend it."""
    from bench.redis_cluster import ClusterUnavailable, local_cluster

    started = local_cluster()
    try:
        cluster = started.__enter__()
    except (ClusterUnavailable, OSError) as exc:
        if require_services():
            pytest.fail(f"the local Redis Cluster did not start: {exc}")
        pytest.skip(f"the local Redis Cluster did not start: {exc}")
    try:
        yield cluster
    finally:
        started.__exit__(None, None, None)


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A fresh Redis key prefix, its keys deleted after the test."""
    prefix = fresh_redis_prefix()
    yield prefix
    await delete_redis_keys(redis_url(), prefix)


async def reset_postgres(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        exists = await conn.fetchval("SELECT to_regclass('public.products') IS NOT NULL")
        if exists:
            await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def database_url(request: pytest.FixtureRequest, tmp_path: Any, postgres_url: str) -> str:
    """An empty database of the backend under test (the tables may exist, the rows do not)."""
    backend = request.param if hasattr(request, "param") else "sqlite"
    if backend == "postgres":
        await reset_postgres(postgres_url)
        return postgres_url
    return str(tmp_path / "synchub.sqlite3")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test that touches a store runs once per backend.
    if "database_url" in metafunc.fixturenames:
        metafunc.parametrize("database_url", BACKENDS, indirect=True)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    s = open_store(database_url)
    await s.open()
    await s.migrate()
    yield s
    await s.close()


@pytest.fixture
async def postgres_store(postgres_url: str) -> AsyncIterator[SqlStore]:
    """The PostgreSQL store alone, on an empty schema, for what only it does (rating moves folded after
    commit, creations committed in batches): a test of it parametrized over both backends would be a
    skip on SQLite, and CI allows none."""
    await reset_postgres(postgres_url)
    s = open_store(postgres_url)
    await s.open()
    await s.migrate()
    assert s.db.dialect == "postgres"
    yield s
    await s.close()


@pytest.fixture
async def embedded(tmp_path: Any) -> AsyncIterator[SqlStore]:
    """The embedded SQLite store alone, for what only it does: group commit, and handing committed
    outbox entries over (it is its database's only writer)."""
    s = open_store(str(tmp_path / "embedded.sqlite3"))
    await s.open()
    await s.migrate()
    yield s
    await s.close()


def token(sub: str, *roles: str, ttl: int = 3600) -> str:
    return issue_token(JWT_SECRET, sub, roles or ("customer",), ttl)


@dataclass
class Hub:
    """A running hub on 127.0.0.1 and an HTTP client for it."""

    base: str
    session: aiohttp.ClientSession
    app: web.Application
    runner: web.AppRunner | None = None
    admin: str = field(default_factory=lambda: token("root", "admin"))
    alice: str = field(default_factory=lambda: token("alice", "customer"))
    bob: str = field(default_factory=lambda: token("bob", "customer"))
    service: str = field(default_factory=lambda: token("checkout", "service"))

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Any]:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(
            method, self.base + path, json=json, data=data, headers=all_headers
        ) as response:
            text = await response.read()
            body: Any = None
            if text and response.content_type.endswith("json"):
                import json as _json

                body = _json.loads(text)
            return response.status, body, response.headers

    async def product(self, sku: str = "SKU-1", price: str = "10.00", **extra: Any) -> dict[str, Any]:
        status, body, _ = await self.call(
            "POST",
            "/api/v1/products",
            token=self.admin,
            json={"sku": sku, "name": sku, "price": price, **extra},
        )
        assert status == 201, body
        return dict(body)

    async def warehouse(self, wid: str = "par-1", region: str = "eu") -> None:
        status, body, _ = await self.call(
            "POST", "/api/v1/warehouses", token=self.admin, json={"id": wid, "region": region, "name": wid}
        )
        assert status == 201, body

    async def stock(self, product_id: str, wid: str, on_hand: int) -> dict[str, Any]:
        status, body, _ = await self.call(
            "PUT",
            f"/api/v1/products/{product_id}/inventory/{wid}",
            token=self.admin,
            json={"on_hand": on_hand},
        )
        assert status == 200, body
        return dict(body)


async def start_hub(settings: Settings) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(create_app(settings), shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None and server.sockets
    port = server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


# Production keeps its real rate limits (hub/settings.py). Tests fire bursts from one address and one
# token that no client would, so their hubs get limits too high to reach: the middleware, the message
# limiter and the connection caps still run on every request. tests/test_ratelimit_http.py sets real ones.
_UNREACHABLE = RatePolicy(1_000_000, 1.0, 1_000_000)
GENEROUS_LIMITS: dict[str, Any] = {
    **{
        name: _UNREACHABLE
        for name in (
            "rate_limit_read",
            "rate_limit_write",
            "rate_limit_reservation",
            "rate_limit_review_post",
            "rate_limit_sync_push",
            "ws_message_rate",
        )
    },
    "max_connections_per_user": 1_000_000,
    "max_connections_per_ip": 1_000_000,
    # The reservation caps too: checked on every reservation, never reached (test_reservation_caps sets real ones).
    "max_reserve_per_line": 1_000_000,
    "max_active_reserved_per_user": 1_000_000_000,
}


def hub_settings(database_url: str, **overrides: Any) -> Settings:
    defaults: dict[str, Any] = {
        "max_body_bytes": 64 * 1024,
        "expiry_interval": 0.1,
        "media_dir": tempfile.mkdtemp(prefix="synchub-media-"),  # not the checkout's var/media
        **GENEROUS_LIMITS,
    }
    return Settings(database_url=database_url, jwt_secret=JWT_SECRET, **{**defaults, **overrides})


@asynccontextmanager
async def running_hub(settings: Settings) -> AsyncIterator[Hub]:
    runner, base = await start_hub(settings)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=600)) as session:
            yield Hub(base=base, session=session, app=runner.app, runner=runner)
    finally:
        await runner.cleanup()


@pytest.fixture
async def hub(database_url: str) -> AsyncIterator[Hub]:
    async with running_hub(hub_settings(database_url)) as running:
        yield running


async def seed(store: SqlStore, sku: str = "SKU-1", stock: dict[str, int] | None = None) -> str:
    """A product with stock in the given warehouses (created as needed, region 'eu' unless 'us-')."""
    product = await store.create_product(NewProduct(sku=sku, name=sku, price=Decimal("10.00")))
    for wid, qty in (stock or {}).items():
        if await store.get_warehouse(wid) is None:
            await store.create_warehouse(Warehouse(wid, "us" if wid.startswith("us-") else "eu", wid))
        await store.set_stock(product.id, wid, qty)
    return product.id


def is_stock_entry(entry: OutboxEntry) -> bool:
    return entry.stream.startswith("inventory.")


def stock_delta(entry: OutboxEntry) -> InventoryDelta:
    """The stock change an inventory outbox entry carries (its payload is the delta's JSON)."""
    assert is_stock_entry(entry), f"not a stock change: {entry.stream}"
    return InventoryDelta(**json.loads(entry.payload))


async def wait_for_lock_waiters(url: str, count: int) -> None:
    """Until ``count`` transactions of the PostgreSQL database at ``url`` wait for a lock (5 s at most)."""
    conn = await asyncpg.connect(url)
    try:
        for _ in range(500):
            waiting = await conn.fetchval(
                "SELECT COUNT(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
    raise AssertionError(f"expected {count} transactions waiting for a lock")
