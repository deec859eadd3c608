"""The database under a hub, read and written around the hub (what an attacker with a copy of it, or an
operator with a SQL shell, sees and does), for the privacy and audit tests."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import asyncpg

from hub.privacy import pseudonym
from tests.conftest import JWT_SECRET


def _is_postgres(database_url: str) -> bool:
    return database_url.startswith(("postgres://", "postgresql://"))


async def raw_fetch(database_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of ``sql`` (``$1`` placeholders) as dicts, read straight from the database."""
    if _is_postgres(database_url):
        conn = await asyncpg.connect(database_url)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()
    db = sqlite3.connect(database_url, timeout=5)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(re.sub(r"\$(\d+)", r"?\1", sql), args).fetchall()]
    finally:
        db.close()


async def raw_execute(database_url: str, sql: str, *args: Any) -> None:
    """Run one statement straight on the database (raises what the database raises)."""
    if _is_postgres(database_url):
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()
        return
    db = sqlite3.connect(database_url, timeout=5)
    try:
        with db:
            db.execute(re.sub(r"\$(\d+)", r"?\1", sql), args)
    finally:
        db.close()


def raw_error_types(database_url: str) -> tuple[type[Exception], ...]:
    return (asyncpg.PostgresError,) if _is_postgres(database_url) else (sqlite3.DatabaseError,)


def pseudonym_of(sub: str) -> str:
    """The pseudonym the test hubs give an erased ``sub``."""
    return pseudonym(JWT_SECRET, sub)
