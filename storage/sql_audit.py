"""The audit log in SQL: appending an entry, and listing them newest first with filters and a keyset
cursor (see :mod:`storage.privacy`; migration 8's triggers keep the table append-only)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from storage.db import Database, Row, Tx
from storage.privacy import AuditEntry, AuditPage, AuditQuery

T = TypeVar("T")

AUDIT_COLUMNS = "seq, at, actor_sub, actor_roles, action, target_kind, target_id, request_id, detail"


class _Core(Protocol):
    db: Database

    async def _write(self, work: Callable[[Tx], Awaitable[T]], *, single_statement: bool = False) -> T: ...


def audit_entry(row: Row) -> AuditEntry:
    return AuditEntry(
        actor_sub=row["actor_sub"],
        actor_roles=tuple(json.loads(row["actor_roles"])),
        action=row["action"],
        target_kind=row["target_kind"],
        target_id=row["target_id"],
        request_id=row["request_id"],
        detail=json.loads(row["detail"]),
        seq=int(row["seq"]),
        at=int(row["at"]),
    )


async def insert_audit(tx: Tx, entry: AuditEntry, ts: int) -> AuditEntry:
    """Append ``entry`` in ``tx`` at ``ts``; the entry as stored (its seq and time)."""
    row = await tx.fetchrow(
        "INSERT INTO audit_log (at, actor_sub, actor_roles, action, target_kind, target_id, request_id,"
        f" detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {AUDIT_COLUMNS}",
        ts,
        entry.actor_sub,
        json.dumps(sorted(entry.actor_roles)),
        entry.action,
        entry.target_kind,
        entry.target_id,
        entry.request_id,
        json.dumps(entry.detail, sort_keys=True, separators=(",", ":")),
    )
    assert row is not None
    return audit_entry(row)


class AuditSql:
    async def record_audit(self: _Core, entry: AuditEntry) -> AuditEntry:
        """Append ``entry`` (its seq and time are the store's); the entry as stored."""

        async def work(tx: Tx) -> AuditEntry:
            return await insert_audit(tx, entry, time.time_ns() // 1000)

        return await self._write(work, single_statement=True)

    async def list_audit(self: _Core, query: AuditQuery) -> AuditPage:
        """Entries matching every filter given, newest first, ``limit`` at most, before the cursor."""
        conditions: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.actor is not None:
            conditions.append(f"actor_sub = {arg(query.actor)}")
        if query.action is not None:
            conditions.append(f"action = {arg(query.action)}")
        if query.target_kind is not None:
            conditions.append(f"target_kind = {arg(query.target_kind)}")
        if query.target_id is not None:
            conditions.append(f"target_id = {arg(query.target_id)}")
        if query.since_us is not None:
            conditions.append(f"at >= {arg(query.since_us)}")
        if query.until_us is not None:
            conditions.append(f"at < {arg(query.until_us)}")
        if query.before_seq is not None:
            conditions.append(f"seq < {arg(query.before_seq)}")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit_log{where} ORDER BY seq DESC LIMIT {arg(query.limit + 1)}"

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(sql, *args)

        rows = await self.db.run(work, readonly=True, single_statement=True)
        items = [audit_entry(r) for r in rows[: query.limit]]
        more = len(rows) > query.limit
        return AuditPage(items, items[-1].seq if more and items else None)
