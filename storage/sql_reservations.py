"""Reservations in SQL: all-or-none lines under one idempotency key, within the owner's caps
(:mod:`storage.reservation_caps`), their expiry, commit and release; each change tells its owner on
``user:{sub}``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from storage.db import Tx
from storage.errors import InsufficientStock, InvalidTransition, NotFound
from storage.models import (
    IdempotentResult,
    ProductStatus,
    Reservation,
    ReservationLine,
    ReservationLineRequest,
    ReservationOutcome,
    ReservationStatus,
    reservation_to_dict,
)
from storage.reservation_caps import ReservationCaps, check_caps
from storage.sql_core import claim_idempotency_key, now_us, store_idempotent_outcome
from storage.sql_pages import newest_first
from storage.sql_schools import in_list, list_arg
from storage.sql_stock import StockSql

# A line with no warehouse named tries the warehouses with the most available stock, at most this many.
_MAX_WAREHOUSE_ATTEMPTS = 16


class ReservationSql(StockSql):
    # -- reservations --------------------------------------------------------------------------
    async def reserve(
        self,
        owner: str,
        idempotency_key: str,
        request_hash: str,
        lines: Sequence[ReservationLineRequest],
        ttl_seconds: int,
        caps: ReservationCaps | None = None,
    ) -> IdempotentResult:
        async def work(tx: Tx) -> IdempotentResult:
            ts = now_us()
            prior = await claim_idempotency_key(tx, owner, idempotency_key, request_hash, ts)
            if prior is not None:
                return IdempotentResult(ReservationOutcome(prior[0]), json.loads(prior[1]), replayed=True)
            status, body = await self._reserve_lines(tx, owner, lines, ttl_seconds, ts, caps=caps)
            encoded = json.dumps(body, separators=(",", ":"))
            await store_idempotent_outcome(tx, owner, idempotency_key, status, encoded)
            return IdempotentResult(status, body, replayed=False)

        return await self._write(work)

    async def _reserve_lines(
        self,
        tx: Tx,
        owner: str,
        lines: Sequence[ReservationLineRequest],
        ttl_seconds: int,
        ts: int,
        *,
        region: str | None = None,
        caps: ReservationCaps | None = None,
    ) -> tuple[ReservationOutcome, dict[str, Any]]:
        """Reserve ``lines`` all or none in ``tx``, within ``caps``; tell the owner on the user stream
        of ``region`` (default: this node's; a cart's checkout names the cart's, so it keeps one order)."""
        if caps is not None and caps.active:
            refusal = await check_caps(tx, self.db.dialect, owner, lines, caps, ts)
            if refusal is not None:
                return ReservationOutcome.CAP_EXCEEDED, refusal
        reservation_id = str(uuid.uuid4())
        chosen: dict[int, ReservationLine] = {}
        try:
            async with self._savepoint(tx):
                # Lines taken in product order so that concurrent reservations lock stock rows in
                # one order; PostgreSQL still detects the rare deadlock and the transaction is retried.
                for index, line in sorted(enumerate(lines), key=lambda il: il[1].product_id):
                    warehouse_id = await self._reserve_line(tx, index, line, ts)
                    chosen[index] = ReservationLine(line.product_id, warehouse_id, line.quantity)
        except (InsufficientStock, NotFound) as exc:
            if isinstance(exc, InsufficientStock):
                return ReservationOutcome.INSUFFICIENT_STOCK, {
                    "code": "insufficient_stock",
                    "detail": exc.message,
                    **exc.details,
                }
            return ReservationOutcome.PRODUCT_NOT_FOUND, {
                "code": "product_not_found",
                "detail": exc.message,
                **exc.details,
            }
        expires_at = ts + ttl_seconds * 1_000_000
        await tx.execute(
            "INSERT INTO reservations (id, owner, status, created_at, expires_at, updated_at)"
            " VALUES ($1, $2, 'pending', $3, $4, $3)",
            reservation_id,
            owner,
            ts,
            expires_at,
        )
        for line_no, taken in sorted(chosen.items()):
            await tx.execute(
                "INSERT INTO reservation_lines"
                " (reservation_id, line_no, product_id, warehouse_id, quantity)"
                " VALUES ($1, $2, $3, $4, $5)",
                reservation_id,
                line_no,
                taken.product_id,
                taken.warehouse_id,
                taken.quantity,
            )
        reservation = Reservation(
            id=reservation_id,
            owner=owner,
            status=ReservationStatus.PENDING,
            lines=tuple(line for _, line in sorted(chosen.items())),
            created_at=ts,
            expires_at=expires_at,
            updated_at=ts,
        )
        body = reservation_to_dict(reservation)
        await self.user_event(
            tx, owner, {"type": "reservation.created", "reservation": body}, ts, region=region
        )
        return ReservationOutcome.RESERVED, body

    async def _reserve_line(self, tx: Tx, index: int, line: ReservationLineRequest, ts: int) -> str:
        product = await tx.fetchrow("SELECT status FROM products WHERE id = $1", line.product_id)
        if product is None:
            raise NotFound("no such product", resource="product", line=index, product_id=line.product_id)
        if product["status"] == ProductStatus.DISCONTINUED:
            raise InsufficientStock("the product is discontinued", line=index, product_id=line.product_id)
        if line.warehouse_id is not None:
            candidates = [line.warehouse_id]
        else:
            args: list[Any] = [line.product_id, line.quantity]
            region_clause = ""
            if line.region is not None:
                args.append(line.region)
                region_clause = " AND w.region = $3"
            rows = await tx.fetch(
                "SELECT s.warehouse_id FROM stock s JOIN warehouses w ON w.id = s.warehouse_id"
                f" WHERE s.product_id = $1 AND s.on_hand - s.reserved >= $2{region_clause}"
                f" ORDER BY s.on_hand - s.reserved DESC, s.warehouse_id"
                f" LIMIT {_MAX_WAREHOUSE_ATTEMPTS}",
                *args,
            )
            candidates = [r["warehouse_id"] for r in rows]
        for warehouse_id in candidates:
            # The guard is evaluated by the database against the latest committed row:
            # this is the statement that makes overselling impossible.
            changed = await tx.execute(
                "UPDATE stock SET reserved = reserved + $3, version = version + 1, updated_at = $4"
                " WHERE product_id = $1 AND warehouse_id = $2 AND on_hand - reserved >= $3",
                line.product_id,
                warehouse_id,
                line.quantity,
                ts,
            )
            if changed == 1:
                await self._emit(tx, line.product_id, warehouse_id, ts)
                return warehouse_id
        raise InsufficientStock(
            "not enough stock available for this line",
            line=index,
            product_id=line.product_id,
            requested=line.quantity,
        )

    async def get_reservation(self, reservation_id: str) -> Reservation | None:
        async def work(tx: Tx) -> Reservation | None:
            return await self._load_reservation(tx, reservation_id)

        return await self.db.run(work, readonly=True)

    async def list_reservations(
        self, owner: str | None, limit: int, after: tuple[int, str] | None = None
    ) -> list[Reservation]:
        """``owner``'s reservations (None: everyone's), newest first, keyset-paginated by
        (created_at, id) after ``after``; their lines read in one more statement, in one snapshot."""
        sql, args = newest_first(
            "SELECT id, owner, status, created_at, expires_at, updated_at FROM reservations",
            owner,
            limit,
            after,
        )
        dialect = self.db.dialect

        async def work(tx: Tx) -> list[Reservation]:
            rows = await tx.fetch(sql, *args)
            if not rows:
                return []
            lines: dict[str, list[ReservationLine]] = {row["id"]: [] for row in rows}
            for line in await tx.fetch(
                "SELECT reservation_id, product_id, warehouse_id, quantity FROM reservation_lines"
                f" WHERE reservation_id {in_list(dialect, '$1')} ORDER BY reservation_id, line_no",
                list_arg(dialect, list(lines)),
            ):
                lines[line["reservation_id"]].append(
                    ReservationLine(line["product_id"], line["warehouse_id"], line["quantity"])
                )
            return [
                Reservation(
                    id=row["id"],
                    owner=row["owner"],
                    status=ReservationStatus(row["status"]),
                    lines=tuple(lines[row["id"]]),
                    created_at=row["created_at"],
                    expires_at=row["expires_at"],
                    updated_at=row["updated_at"],
                )
                for row in rows
            ]

        return await self.db.run(work, readonly=True)

    async def _load_reservation(self, tx: Tx, reservation_id: str) -> Reservation | None:
        row = await tx.fetchrow(
            "SELECT id, owner, status, created_at, expires_at, updated_at FROM reservations WHERE id = $1",
            reservation_id,
        )
        if row is None:
            return None
        lines = await tx.fetch(
            "SELECT product_id, warehouse_id, quantity FROM reservation_lines"
            " WHERE reservation_id = $1 ORDER BY line_no",
            reservation_id,
        )
        return Reservation(
            id=row["id"],
            owner=row["owner"],
            status=ReservationStatus(row["status"]),
            lines=tuple(ReservationLine(r["product_id"], r["warehouse_id"], r["quantity"]) for r in lines),
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            updated_at=row["updated_at"],
        )

    async def _finish(
        self, tx: Tx, reservation_id: str, target: ReservationStatus, ts: int, *, tell_owner: bool = True
    ) -> tuple[Reservation, bool]:
        """Move a pending reservation to ``target`` and settle its stock, exactly once; ``tell_owner``:
        with a ``reservation.*`` event on the owner's user stream (a parts request's reservation tells
        its school through the request's own events instead).

        Returns the reservation and whether this call made the transition (False for a repeat).
        """
        # A reservation past its expiry cannot be committed even before the sweep has expired it.
        not_expired = " AND expires_at > $3" if target == ReservationStatus.COMMITTED else ""
        changed = await tx.execute(
            "UPDATE reservations SET status = $2, updated_at = $3"
            f" WHERE id = $1 AND status = 'pending'{not_expired}",
            reservation_id,
            target.value,
            ts,
        )
        reservation = await self._load_reservation(tx, reservation_id)
        if reservation is None:
            raise NotFound("no such reservation", resource="reservation", reservation_id=reservation_id)
        if changed != 1:
            if reservation.status == target:
                return reservation, False  # a retried commit/release: nothing more to do
            current = reservation.status.value
            if reservation.status == ReservationStatus.PENDING:
                current = ReservationStatus.EXPIRED.value  # overdue; the sweep will record it
            raise InvalidTransition(
                f"the reservation is {current}, it cannot become {target.value}", current_status=current
            )
        settle_on_hand = 1 if target == ReservationStatus.COMMITTED else 0
        freed = []
        for line in sorted(reservation.lines, key=lambda ln: (ln.product_id, ln.warehouse_id)):
            changed = await tx.execute(
                "UPDATE stock SET reserved = reserved - $3, on_hand = on_hand - $3 * $4,"
                " version = version + 1, updated_at = $5"
                " WHERE product_id = $1 AND warehouse_id = $2 AND reserved >= $3",
                line.product_id,
                line.warehouse_id,
                line.quantity,
                settle_on_hand,
                ts,
            )
            if changed == 1:
                freed.append(await self._emit(tx, line.product_id, line.warehouse_id, ts))
            # changed == 0 only if the product was deleted meanwhile, which delete_product
            # refuses while reservations are pending.
        if not settle_on_hand:
            # Released units go to the parts requests waiting for them first (after every stock row of
            # the reservation is locked: storage.sql_parts takes its queue locks after the stock rows).
            await self._stock_available(tx, freed, ts)
        if tell_owner:
            await self.user_event(
                tx,
                reservation.owner,
                {"type": f"reservation.{target.value}", "reservation": reservation_to_dict(reservation)},
                ts,
            )
        return reservation, True

    async def commit_reservation(self, reservation_id: str) -> Reservation:
        async def work(tx: Tx) -> Reservation:
            return (await self._finish(tx, reservation_id, ReservationStatus.COMMITTED, now_us()))[0]

        return await self._write(work)

    async def release_reservation(self, reservation_id: str) -> Reservation:
        async def work(tx: Tx) -> Reservation:
            return (await self._finish(tx, reservation_id, ReservationStatus.RELEASED, now_us()))[0]

        return await self._write(work)

    async def expire_reservations(self, limit: int = 500) -> list[Reservation]:
        async def work(tx: Tx) -> list[Reservation]:
            ts = now_us()
            due = await tx.fetch(
                "SELECT id FROM reservations WHERE status = 'pending' AND expires_at <= $1"
                " ORDER BY expires_at LIMIT $2",
                ts,
                limit,
            )
            expired = []
            for row in due:
                try:
                    reservation, changed = await self._finish(tx, row["id"], ReservationStatus.EXPIRED, ts)
                except InvalidTransition:
                    continue  # committed or released by someone else meanwhile
                if changed:
                    expired.append(reservation)
            return expired

        return await self._write(work)

    async def purge_idempotency_keys(self, older_than_us: int) -> int:
        async def work(tx: Tx) -> int:
            return await tx.execute("DELETE FROM idempotency_keys WHERE created_at < $1", older_than_us)

        return await self._write(work, single_statement=True)
