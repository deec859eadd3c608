"""Choose a store from a database URL: ``postgresql://…`` for PostgreSQL, anything else is a path to
an SQLite file (``sqlite:///path`` is accepted too)."""

from __future__ import annotations

from storage.postgres import PostgresStore
from storage.sql import SqlStore
from storage.sqlite import SqliteStore


def open_store(database_url: str) -> SqlStore:
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(database_url)
    if database_url.startswith("sqlite:///"):
        return SqliteStore(database_url.removeprefix("sqlite:///") or ":memory:")
    return SqliteStore(database_url)
