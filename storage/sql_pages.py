"""Keyset pages of rows that have an owner, newest first: the one query shape of the listings an owner
(or an admin, for everyone) pages through — reservations, webhook endpoints.

A page is ordered by ``(created_at, id)`` descending and continues strictly after the last row of the
previous page (``after``), so rows inserted meanwhile never shift a page or repeat a row, as an offset
would. The row comparison ``(created_at, id) < (…)`` reads the same in PostgreSQL and SQLite.
"""

from __future__ import annotations

from typing import Any


def newest_first(
    select_from: str, owner: str | None, limit: int, after: tuple[int, str] | None
) -> tuple[str, list[Any]]:
    """The statement and its arguments: ``select_from`` is ``SELECT <columns> FROM <table>``."""
    conditions: list[str] = []
    args: list[Any] = []
    if owner is not None:
        args.append(owner)
        conditions.append(f"owner = ${len(args)}")
    if after is not None:
        args.extend(after)
        conditions.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"{select_from}{where} ORDER BY created_at DESC, id DESC LIMIT ${len(args)}", args
