"""The outbox in SQL: appending an entry in a writing transaction (a stock change, a cart's delta, a
user's event), and reading, acknowledging and measuring what the relay has not published yet.
See :mod:`storage.base` for the guarantees."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson

from storage.db import Row, Tx
from storage.models import OutboxEntry
from storage.sql_core import _APPENDED, SqlCore
from storage.streams import inventory_stream, user_stream


class OutboxSql(SqlCore):
    async def _append(
        self,
        tx: Tx,
        stream: str,
        key: str,
        version: int,
        payload: bytes,
        ts: int,
        product_id: str = "",
        warehouse_id: str = "",
    ) -> None:
        appended = await tx.fetchrow(
            "INSERT INTO outbox (product_id, warehouse_id, payload, created_at, stream, dedupe_key, version)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
            product_id,
            warehouse_id,
            payload.decode(),
            ts,
            stream,
            key,
            version,
        )
        assert appended is not None
        self._appended(appended["seq"], stream, key, version, payload)

    def _appended(self, seq: int, stream: str, key: str, version: int, payload: bytes) -> None:
        """Tell this transaction's writer of an entry appended (it is announced once committed)."""
        entries = _APPENDED.get()
        if entries is not None:
            entries.append(OutboxEntry(seq, stream, key, version, payload))

    async def append_event(
        self, tx: Tx, stream: str, key: str, version: int, payload: dict[str, Any], ts: int
    ) -> None:
        """Append an event to the outbox in ``tx``: published to ``stream`` once per (key, version).
        (orjson: the events of carts and users have no earlier wire format to keep byte for byte.)"""
        await self._append(tx, stream, key, version, orjson.dumps(payload), ts)

    async def user_event(
        self, tx: Tx, sub: str, payload: dict[str, Any], ts: int, *, region: str | None = None
    ) -> None:
        """Append an event for ``sub``'s ``user:{sub}`` channel (carts' and reservations' status), with
        the next number of the user's event counter as its version and in its ``data``."""
        row = await tx.fetchrow(
            "INSERT INTO user_events (sub, version) VALUES ($1, 1)"
            " ON CONFLICT (sub) DO UPDATE SET version = user_events.version + 1 RETURNING version",
            sub,
        )
        assert row is not None
        version = int(row["version"])
        await self.append_event(
            tx,
            user_stream(region or self.region, sub),
            f"user:{sub}",
            version,
            {**payload, "sub": sub, "version": version, "ts": ts},
            ts,
        )

    # -- outbox --------------------------------------------------------------------------------
    async def read_outbox(self, limit: int = 500) -> list[OutboxEntry]:
        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(
                "SELECT seq, stream, dedupe_key, version, payload FROM outbox ORDER BY seq LIMIT $1", limit
            )

        return [_outbox_entry(r) for r in await self.db.run(work, readonly=True, single_statement=True)]

    async def ack_outbox(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        ordered = sorted(set(seqs))

        if self.db.dialect == "postgres":
            # Every node's relay acknowledges the entries it published, and they publish the same
            # entries: one statement, which skips the rows another relay's acknowledgement is deleting
            # instead of waiting for them. Waiting, a range DELETE and a transaction of one-row DELETEs
            # locked the same rows in different orders and deadlocked: both relays stood still until
            # PostgreSQL's deadlock_timeout (1 s) broke it. A row skipped stays if that other deletion
            # rolls back, and is published (deduplicated) and acknowledged again by a later sweep.
            async def delete(tx: Tx) -> None:
                await tx.execute(
                    "DELETE FROM outbox WHERE seq IN"
                    " (SELECT seq FROM outbox WHERE seq = ANY($1::bigint[]) FOR UPDATE SKIP LOCKED)",
                    ordered,
                )

            await self.db.run(delete, single_statement=True)
            return

        # Entries are acknowledged in order, so deleting a contiguous range is the common case.
        contiguous = ordered[-1] - ordered[0] + 1 == len(ordered)

        async def work(tx: Tx) -> None:
            if contiguous:
                await tx.execute("DELETE FROM outbox WHERE seq >= $1 AND seq <= $2", ordered[0], ordered[-1])
                return
            for seq in ordered:
                await tx.execute("DELETE FROM outbox WHERE seq = $1", seq)

        await self.db.run(work, single_statement=contiguous)

    async def outbox_backlog(self) -> tuple[int, int | None]:
        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox")

        row = await self.db.run(work, readonly=True, single_statement=True)
        assert row is not None
        return int(row["n"]), row["oldest"]


def _json_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _outbox_entry(row: Row) -> OutboxEntry:
    payload = row["payload"]
    if row["stream"]:
        return OutboxEntry(row["seq"], row["stream"], row["dedupe_key"], row["version"], payload.encode())
    # A stock change written before migration 3 or by PostgreSQL's batched reservations (the SQL
    # functions of migration 2): its stream, key and version are in its payload.
    delta = json.loads(payload)
    key = f"{delta['product_id']}/{delta['warehouse_id']}"
    return OutboxEntry(row["seq"], inventory_stream(delta["region"]), key, delta["version"], payload.encode())
