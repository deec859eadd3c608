"""Schema migrations: idempotent, safe to run concurrently, and one schema on every backend."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from storage.factory import open_store
from storage.migrations import MIGRATIONS
from storage.sql import SqlStore

ALL_VERSIONS = [version for version, _, _ in MIGRATIONS]
EXPECTED_TABLES = {
    "schema_migrations",
    "products",
    "warehouses",
    "stock",
    "reservations",
    "reservation_lines",
    "idempotency_keys",
    "outbox",
    "carts",
    "cart_mutations",
    "replicas",
    "user_events",
    "reviews",
    "review_mutations",
    "review_votes",
    "review_reports",
    "rating_moves",
    "realtime_tickets",
    "api_keys",
    "audit_log",
    "user_profiles",
    "webhook_endpoints",
    "webhook_positions",
    "webhook_leases",
    "webhook_deliveries",
    "webhook_attempts",
    "schools",
    "school_api_keys",
    "school_assets",
    "parts_requests",
    "parts_request_lines",
    "parts_backorders",
    "personalization_users",
    "behaviour_events",
    "co_viewed",
    "co_carted",
    "user_preferences",
    "trending",
}


@asynccontextmanager
async def new_postgres_database(postgres_url: str) -> AsyncIterator[str]:
    """A brand-new, empty PostgreSQL database on the test server, dropped afterwards."""
    name = f"synchub_migrations_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    await admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield f"{postgres_url.rsplit('/', 1)[0]}/{name}"
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def fresh_postgres_url(postgres_url: str) -> AsyncIterator[str]:
    async with new_postgres_database(postgres_url) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
async def empty_database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> AsyncIterator[str]:
    """An empty database with no tables at all, of each backend in turn."""
    if request.param == "sqlite":
        yield str(tmp_path / "fresh.sqlite3")
        return
    async with new_postgres_database(postgres_url) as url:
        yield url


async def opened(url: str) -> SqlStore:
    store = open_store(url)
    await store.open()
    return store


async def sqlite_schema(path: str) -> dict[str, list[str]]:
    store = await opened(path)
    try:

        async def work(tx):  # type: ignore[no-untyped-def]
            tables = await tx.fetch(
                "SELECT name FROM sqlite_master"
                " WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
            schema = {}
            for row in tables:
                columns = await tx.fetch(f"SELECT name FROM pragma_table_info('{row['name']}') ORDER BY cid")
                schema[row["name"]] = [c["name"] for c in columns]
            return schema

        return await store.db.run(work)
    finally:
        await store.close()


async def sqlite_indexes(path: str) -> set[str]:
    store = await opened(path)
    try:

        async def work(tx):  # type: ignore[no-untyped-def]
            return await tx.fetch(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex_%'"
            )

        return {r["name"] for r in await store.db.run(work)}
    finally:
        await store.close()


async def postgres_schema(url: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        )
    finally:
        await conn.close()
    schema: dict[str, list[str]] = {}
    for row in rows:
        schema.setdefault(row["table_name"], []).append(row["column_name"])
    return schema


async def postgres_indexes(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT i.relname AS name FROM pg_index x"
            " JOIN pg_class i ON i.oid = x.indexrelid"
            " JOIN pg_namespace n ON n.oid = i.relnamespace"
            " WHERE n.nspname = 'public' AND NOT x.indisprimary AND NOT x.indisunique"
        )
    finally:
        await conn.close()
    return {r["name"] for r in rows}


async def test_the_first_migration_of_an_empty_database_applies_every_version(empty_database_url):
    store = await opened(empty_database_url)
    try:
        assert await store.migrate() == ALL_VERSIONS
        await store.ping()
    finally:
        await store.close()


async def test_migrate_is_idempotent(empty_database_url):
    store = await opened(empty_database_url)
    try:
        assert await store.migrate() == ALL_VERSIONS
        assert await store.migrate() == []
        assert await store.migrate() == []
    finally:
        await store.close()
    # A restarted process finds nothing to do either.
    again = await opened(empty_database_url)
    try:
        assert await again.migrate() == []
    finally:
        await again.close()


async def test_the_migrated_store_fixture_has_nothing_left_to_apply(store):
    assert await store.migrate() == []


async def test_concurrent_migrations_apply_each_version_exactly_once(empty_database_url):
    stores = [await opened(empty_database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(s.migrate() for s in stores))
    finally:
        for s in stores:
            await s.close()
    assert sorted(results, key=len, reverse=True) == [ALL_VERSIONS, [], [], []]


async def test_migrations_record_each_applied_version_once(empty_database_url):
    store = await opened(empty_database_url)
    try:
        await store.migrate()
        await store.migrate()

        async def work(tx):  # type: ignore[no-untyped-def]
            return await tx.fetch(
                "SELECT version, description, applied_at FROM schema_migrations ORDER BY version"
            )

        rows = await store.db.run(work)
    finally:
        await store.close()
    assert [r["version"] for r in rows] == ALL_VERSIONS
    assert [r["description"] for r in rows] == [description for _, description, _ in MIGRATIONS]
    assert all(r["applied_at"] > 0 for r in rows)


async def test_migration_versions_are_unique_and_increasing():
    assert sorted(set(ALL_VERSIONS)) == ALL_VERSIONS
    assert ALL_VERSIONS[0] == 1


async def test_sqlite_and_postgres_have_the_same_tables_and_columns(tmp_path, fresh_postgres_url):
    sqlite_path = str(tmp_path / "schema.sqlite3")
    for url in (sqlite_path, fresh_postgres_url):
        store = await opened(url)
        try:
            assert await store.migrate() == ALL_VERSIONS
        finally:
            await store.close()

    on_sqlite = await sqlite_schema(sqlite_path)
    on_postgres = await postgres_schema(fresh_postgres_url)
    # Review search is each database's own index: SQLite's FTS5 table (and the tables FTS5 keeps for it)
    search = {t for t in on_sqlite if t == "review_search" or t.startswith("review_search_")}
    assert "review_search" in search
    on_sqlite = {t: c for t, c in on_sqlite.items() if t not in search}
    assert set(on_sqlite) == EXPECTED_TABLES
    assert set(on_postgres) == EXPECTED_TABLES
    for table in sorted(EXPECTED_TABLES):
        assert on_sqlite[table] == on_postgres[table], table


async def test_sqlite_and_postgres_have_the_same_secondary_indexes(tmp_path, fresh_postgres_url):
    sqlite_path = str(tmp_path / "schema.sqlite3")
    for url in (sqlite_path, fresh_postgres_url):
        store = await opened(url)
        try:
            await store.migrate()
        finally:
            await store.close()
    on_sqlite = await sqlite_indexes(sqlite_path)
    on_postgres = await postgres_indexes(fresh_postgres_url)
    # PostgreSQL's search index (SQLite's is a table) and its index of products' attributes as jsonb
    # (SQLite has none); the unique index is listed by SQLite only here.
    assert on_postgres - on_sqlite == {"reviews_search", "products_attributes"}
    assert on_sqlite - on_postgres == {"reviews_one_per_author"}
    assert "reservations_pending_by_expiry" in on_sqlite
