"""Choose a store from a database URL: ``postgresql://…`` for PostgreSQL, anything else is a path to
an SQLite file (``sqlite:///path`` is accepted too)."""

from __future__ import annotations

from storage.postgres import PostgresStore
from storage.sql import SqlStore
from storage.sqlite import SqliteStore


def open_store(database_url: str, *, region: str = "default") -> SqlStore:
    """``region``: the hub's region, whose user streams carry its users' private events."""
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(database_url, region=region)
    if database_url.startswith("sqlite:///"):
        return SqliteStore(database_url.removeprefix("sqlite:///") or ":memory:", region=region)
    return SqliteStore(database_url, region=region)
