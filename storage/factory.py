"""Choose a store from a database URL: ``postgresql://…`` for PostgreSQL, anything else is a path to
an SQLite file (``sqlite:///path`` is accepted too)."""

from __future__ import annotations

from storage.postgres import PostgresStore
from storage.sql import SqlStore
from storage.sqlite import SqliteStore


def open_store(
    database_url: str, *, region: str = "default", sqlite_commit_spacing: float | None = None
) -> SqlStore:
    """``region``: the hub's region, whose user streams carry its users' private events.
    ``sqlite_commit_spacing`` (seconds; None: the store's default): see ``SqliteDatabase``."""
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(database_url, region=region)
    path = (
        database_url.removeprefix("sqlite:///") or ":memory:"
        if database_url.startswith("sqlite:///")
        else database_url
    )
    return SqliteStore(path, region=region, commit_spacing=sqlite_commit_spacing)
