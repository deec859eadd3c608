"""Parts requests in SQL: made once per key, their lines served from the school's region with the
reservations' own guarded statement, the rest queued; the queue filled first come, first served whenever
units become available; transitions that commit or release what a request holds. storage/parts.py states
the guarantees.

**Lock order** (PostgreSQL; SQLite has one writer). Whatever touches a product's backorder queue in a
region holds the stock rows it needs first, then the queue's advisory lock (``pg_advisory_xact_lock``,
class :data:`~storage.parts.QUEUE_LOCK_CLASS`, taken in key order), then request rows:

* a new request locks every stock row of its products in the region (in (product, warehouse) order),
  then their queues, and only then decides what it takes or queues — so a stock row that changed under it
  is seen, and a queue is never read while someone else is changing it;
* a stock change that makes units available (``set_stock``, ``adjust_stock``, a reservation released or
  expired; :meth:`_stock_available`, called by storage.sql_stock and storage.sql_reservations) holds its
  row already; it looks for a queue and, if there is one (or the row was just inserted, which no new
  request could have locked), takes the queue's lock, then the rows of the requests its fills will
  serve, in id order (fills of two products serving the same requests would otherwise cross), and fills
  the queue's head from that row only;
* cancelling or shipping a request locks its products' stock rows and queues before the request's row.

So nobody waits for a queue's lock while holding a request row, and fills take the request rows they
serve in one order (a cancellation holds its own request's row first, but every other transaction that
could want that row needs one of its queues' locks, which the cancellation took before); the
deadlocks left are those PostgreSQL already detects and the store retries (queue keys of different
products hashing alike, say).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from storage.attributes import attribute_conditions
from storage.db import Row, Tx
from storage.errors import (
    Conflict,
    IdempotencyMismatch,
    InsufficientStock,
    InvalidTransition,
    NotFound,
    VersionMismatch,
)
from storage.models import ReservationLineRequest, ReservationStatus, StockLevel
from storage.parts import (
    NEVER_EXPIRES_US,
    QUEUE_LOCK_CLASS,
    TRANSITIONS,
    NewPartsLine,
    NewPartsRequest,
    PartsLine,
    PartsOutcome,
    PartsRequest,
    PartsRequestPage,
    PartsRequestQuery,
    PartsStatus,
    Policy,
    parts_event,
    parts_request_to_dict,
    queue_lock_key,
    reservation_owner,
)
from storage.sql_core import now_us
from storage.sql_reservations import ReservationSql
from storage.sql_schools import SchoolSql, in_list, list_arg
from storage.sql_stock import _STOCK_SELECT, _stock
from storage.streams import parts_stream

_REQUEST_COLUMNS = (
    "id, school_id, asset_id, region, needed_by, status, policy, reservation_id, created_by, created_at,"
    " updated_at, version"
)
_LINE_COLUMNS = "request_id, line_no, sku, query, product_id, quantity, reserved, backordered"


def _line(row: Row) -> PartsLine:
    return PartsLine(
        line_no=row["line_no"],
        sku=row["sku"],
        query=json.loads(row["query"]) if row["query"] else None,
        product_id=row["product_id"],
        quantity=row["quantity"],
        reserved=row["reserved"],
        backordered=row["backordered"],
    )


def _request(row: Row, lines: Sequence[Row]) -> PartsRequest:
    return PartsRequest(
        id=row["id"],
        school_id=row["school_id"],
        asset_id=row["asset_id"],
        region=row["region"],
        needed_by=row["needed_by"],
        status=PartsStatus(row["status"]),
        policy=Policy(row["policy"]),
        lines=tuple(_line(r) for r in lines),
        reservation_id=row["reservation_id"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


class PartsSql(ReservationSql, SchoolSql):
    def _parts_for_update(self) -> str:
        return " FOR UPDATE" if self.db.dialect == "postgres" else ""

    # -- locks (see the module's docstring) -------------------------------------------------------
    async def _parts_lock(self, tx: Tx, products: Iterable[str], region: str) -> None:
        """PostgreSQL: the stock rows of ``products`` in ``region``, then their queues' locks."""
        if self.db.dialect != "postgres":
            return
        ids = sorted(set(products))
        await tx.fetch(
            "SELECT 1 AS ok FROM stock s JOIN warehouses w ON w.id = s.warehouse_id"
            " WHERE s.product_id = ANY($1::text[]) AND w.region = $2"
            " ORDER BY s.product_id, s.warehouse_id FOR UPDATE OF s",
            ids,
            region,
        )
        await self._parts_lock_keys(tx, [queue_lock_key(p, region) for p in ids])

    async def _parts_lock_keys(self, tx: Tx, keys: Iterable[int]) -> None:
        if self.db.dialect != "postgres":
            return
        ordered = sorted(set(keys))
        if len(ordered) == 1:
            await tx.fetchrow("SELECT pg_advisory_xact_lock($1, $2) AS locked", QUEUE_LOCK_CLASS, ordered[0])
            return
        # One statement, the keys taken in order (as storage.pg_reserve takes its owners' locks).
        await tx.fetch(
            "SELECT pg_advisory_xact_lock($1, k) AS locked"
            " FROM (SELECT unnest($2::int[]) AS k ORDER BY 1) AS keys",
            QUEUE_LOCK_CLASS,
            ordered,
        )

    # -- reading -----------------------------------------------------------------------------------
    async def _parts_load_many(self, tx: Tx, rows: Sequence[Row]) -> list[PartsRequest]:
        if not rows:
            return []
        lines = await tx.fetch(
            f"SELECT {_LINE_COLUMNS} FROM parts_request_lines"
            f" WHERE request_id {in_list(self.db.dialect, '$1')} ORDER BY request_id, line_no",
            list_arg(self.db.dialect, [r["id"] for r in rows]),
        )
        by_request: dict[str, list[Row]] = {}
        for line in lines:
            by_request.setdefault(line["request_id"], []).append(line)
        return [_request(r, by_request.get(r["id"], [])) for r in rows]

    async def _parts_load(self, tx: Tx, request_id: str, school_id: str | None = None) -> PartsRequest | None:
        args: list[Any] = [request_id]
        where = "id = $1"
        if school_id is not None:
            args.append(school_id)
            where += " AND school_id = $2"
        row = await tx.fetchrow(f"SELECT {_REQUEST_COLUMNS} FROM parts_requests WHERE {where}", *args)
        return (await self._parts_load_many(tx, [row]))[0] if row else None

    async def get_parts_request(self, school_id: str, request_id: str) -> PartsRequest | None:
        async def work(tx: Tx) -> PartsRequest | None:
            return await self._parts_load(tx, request_id, school_id)

        return await self.db.run(work, readonly=True)

    async def list_parts_requests(self, query: PartsRequestQuery) -> PartsRequestPage:
        """Newest first, every filter given matched, keyset-paginated by (created_at, id)."""
        args: list[Any] = [query.school_id]
        clauses = ["school_id = $1"]

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.status is not None:
            clauses.append(f"status = {arg(query.status.value)}")
        if query.asset_id is not None:
            clauses.append(f"asset_id = {arg(query.asset_id)}")
        if query.needed_from is not None:
            clauses.append(f"needed_by >= {arg(query.needed_from)}")
        if query.needed_to is not None:
            clauses.append(f"needed_by <= {arg(query.needed_to)}")
        if query.after is not None:
            created_at, last_id = query.after
            clauses.append(f"(created_at, id) < ({arg(created_at)}, {arg(last_id)})")
        sql = (
            f"SELECT {_REQUEST_COLUMNS} FROM parts_requests WHERE {' AND '.join(clauses)}"
            f" ORDER BY created_at DESC, id DESC LIMIT {arg(query.limit + 1)}"
        )

        async def work(tx: Tx) -> list[PartsRequest]:
            return await self._parts_load_many(tx, await tx.fetch(sql, *args))

        found = await self.db.run(work, readonly=True)
        items = found[: query.limit]
        next_after = None
        if len(found) > query.limit:
            next_after = (items[-1].created_at, items[-1].id)
        return PartsRequestPage(items=items, next_after=next_after)

    # -- making one --------------------------------------------------------------------------------
    async def create_parts_request(
        self,
        school_id: str,
        idempotency_key: str,
        request_hash: str,
        new: NewPartsRequest,
        created_by: str,
    ) -> PartsOutcome:
        """Make the request once per (school, key): reserve what its policy lets it take now, queue the
        rest. NotFound for a school, asset or line's product (``fitting_product``: a query nothing fits);
        Conflict(product_discontinued) for a line's discontinued SKU."""

        async def work(tx: Tx) -> PartsOutcome:
            found = await tx.fetchrow(
                "SELECT s.region, p.id, p.request_hash, p.answer,"
                " EXISTS (SELECT 1 FROM school_assets a WHERE a.id = $3 AND a.school_id = s.id) AS asset"
                " FROM schools s LEFT JOIN parts_requests p ON p.school_id = s.id AND p.idempotency_key = $2"
                " WHERE s.id = $1",
                school_id,
                idempotency_key,
                new.asset_id,
            )
            if found is None:
                raise NotFound("no such school", resource="school", school_id=school_id)
            if found["id"] is not None:
                if found["request_hash"] != request_hash:
                    raise IdempotencyMismatch("this Idempotency-Key was used with a different request body")
                return PartsOutcome(found["id"], json.loads(found["answer"]), replayed=True)
            if not found["asset"]:
                raise NotFound("the school has no such asset", resource="asset", asset_id=new.asset_id)
            region = found["region"]
            products = [
                await self._parts_resolve(tx, index, line, region) for index, line in enumerate(new.lines)
            ]
            await self._parts_lock(tx, [p["id"] for p in products], region)
            ts = now_us()  # after the locks: one product's requests are timed in their queue's order
            request = PartsRequest(
                id=str(uuid.uuid4()),
                school_id=school_id,
                asset_id=new.asset_id,
                region=region,
                needed_by=new.needed_by,
                status=PartsStatus.REQUESTED,
                policy=new.policy,
                lines=tuple(
                    PartsLine(
                        index,
                        product["sku"],
                        line.query.to_dict() if line.query else None,
                        product["id"],
                        line.quantity,
                        0,
                        0,
                    )
                    for index, (line, product) in enumerate(zip(new.lines, products, strict=True))
                ),
                reservation_id=None,
                created_by=created_by,
                created_at=ts,
                updated_at=ts,
                version=1,
            )
            await tx.execute(
                "INSERT INTO parts_requests (id, school_id, asset_id, region, needed_by, status, policy,"
                " idempotency_key, request_hash, created_by, created_at, updated_at, version)"
                " VALUES ($1, $2, $3, $4, $5, 'requested', $6, $7, $8, $9, $10, $10, 1)",
                request.id,
                school_id,
                new.asset_id,
                region,
                new.needed_by,
                new.policy.value,
                idempotency_key,
                request_hash,
                created_by,
                ts,
            )
            await self._parts_announce(tx, request, "created", ts)
            queued = {
                r["product_id"]
                for r in await tx.fetch(
                    "SELECT DISTINCT product_id FROM parts_backorders"
                    f" WHERE region = $1 AND product_id {in_list(self.db.dialect, '$2')}",
                    region,
                    list_arg(self.db.dialect, sorted({p["id"] for p in products})),
                )
            }
            reservation_id: str | None = None
            lines = []
            for line in request.lines:
                # A product others wait for: this line queues behind them, whatever is on the shelf.
                takes = (
                    []
                    if line.product_id in queued
                    else await self._parts_take(
                        tx, line.line_no, line.product_id, line.quantity, new.policy, region, ts
                    )
                )
                got = sum(q for _, q in takes)
                if takes:
                    reservation_id = await self._parts_hold(
                        tx, school_id, reservation_id, line.product_id, takes, ts
                    )
                if got < line.quantity:
                    queued.add(line.product_id)
                    await tx.execute(
                        "INSERT INTO parts_backorders (product_id, region, request_id, line_no, queued_at)"
                        " VALUES ($1, $2, $3, $4, $5)",
                        line.product_id,
                        region,
                        request.id,
                        line.line_no,
                        ts,
                    )
                lines.append(dataclasses.replace(line, reserved=got, backordered=line.quantity - got))
                await tx.execute(
                    "INSERT INTO parts_request_lines"
                    " (request_id, line_no, sku, query, product_id, quantity, reserved, backordered)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    request.id,
                    line.line_no,
                    line.sku,
                    json.dumps(line.query, separators=(",", ":")) if line.query else None,
                    line.product_id,
                    line.quantity,
                    got,
                    line.quantity - got,
                )
            waiting = any(line.backordered for line in lines)
            request = dataclasses.replace(
                request,
                status=PartsStatus.BACKORDERED if waiting else PartsStatus.RESERVED,
                lines=tuple(lines),
                reservation_id=reservation_id,
                version=2,
            )
            answer = parts_request_to_dict(request)
            await tx.execute(
                "UPDATE parts_requests SET status = $2, reservation_id = $3, answer = $4, version = 2"
                " WHERE id = $1",
                request.id,
                request.status.value,
                reservation_id,
                json.dumps(answer, separators=(",", ":")),
            )
            await self._parts_announce(tx, request, request.status.value, ts)
            return PartsOutcome(request.id, answer, replayed=False)

        try:
            return await self._write(work)
        except Conflict as exc:
            if "code" in exc.details:
                raise  # a refusal of the request's (product_discontinued), not of its key
            # The same key, made concurrently and committed first: this attempt rolled back, and the
            # next one finds the request and replays it (or names the mismatch).
            return await self._write(work)

    async def _parts_resolve(self, tx: Tx, index: int, line: NewPartsLine, region: str) -> Row:
        """The product a line asks for: its SKU's, or the one fitting its query with the most units
        available in ``region`` (then by SKU)."""
        if line.sku is not None:
            row = await tx.fetchrow("SELECT id, sku, status FROM products WHERE sku = $1", line.sku)
            if row is None:
                raise NotFound("no product has that sku", resource="product", line=index, sku=line.sku)
            if row["status"] == "discontinued":
                raise Conflict(
                    "the product is discontinued: it cannot be backordered",
                    code="product_discontinued",
                    line=index,
                    sku=line.sku,
                )
            return row
        assert line.query is not None
        args: list[Any] = [region]

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        clauses = ["p.status IN ('active', 'preorder')"]
        if line.query.category is not None:
            clauses.append(f"p.category = {arg(line.query.category)}")
        clauses.extend(
            attribute_conditions(self.db.dialect, line.query.attributes, arg, column="p.attributes")
        )
        row = await tx.fetchrow(
            f"SELECT p.id, p.sku FROM products p WHERE {' AND '.join(clauses)}"
            " ORDER BY (SELECT COALESCE(SUM(s.on_hand - s.reserved), 0) FROM stock s"
            " JOIN warehouses w ON w.id = s.warehouse_id WHERE s.product_id = p.id AND w.region = $1) DESC,"
            " p.sku LIMIT 1",
            *args,
        )
        if row is None:
            raise NotFound("no product fits the line's query", resource="fitting_product", line=index)
        return row

    # -- taking and holding stock ------------------------------------------------------------------
    async def _parts_take(
        self,
        tx: Tx,
        index: int,
        product_id: str,
        quantity: int,
        policy: Policy,
        region: str,
        ts: int,
        warehouse_id: str | None = None,
    ) -> list[tuple[str, int]]:
        """Reserve up to ``quantity`` in ``region`` (or at ``warehouse_id`` only) as ``policy`` allows:
        [(warehouse, units)], [] if nothing. Each take is the reservations' guarded statement."""
        if policy is Policy.ALL_OR_NONE:
            line = ReservationLineRequest(
                product_id, quantity, warehouse_id=warehouse_id, region=None if warehouse_id else region
            )
            try:
                return [(await self._reserve_line(tx, index, line, ts), quantity)]
            except InsufficientStock:
                return []
        args: list[Any] = [product_id, region]
        only = ""
        if warehouse_id is not None:
            args.append(warehouse_id)
            only = " AND s.warehouse_id = $3"
        rows = await tx.fetch(
            "SELECT s.warehouse_id, s.on_hand - s.reserved AS available FROM stock s"
            " JOIN warehouses w ON w.id = s.warehouse_id JOIN products p ON p.id = s.product_id"
            f" WHERE s.product_id = $1 AND w.region = $2 AND s.on_hand > s.reserved{only}"
            " AND p.status <> 'discontinued'"
            " ORDER BY s.on_hand - s.reserved DESC, s.warehouse_id",
            *args,
        )
        taken: list[tuple[str, int]] = []
        need = quantity
        for row in rows:
            if need == 0:
                break
            units = min(need, int(row["available"]))
            # (the rows are locked by this transaction; the guard stays the database's all the same)
            changed = await tx.execute(
                "UPDATE stock SET reserved = reserved + $3, version = version + 1, updated_at = $4"
                " WHERE product_id = $1 AND warehouse_id = $2 AND on_hand - reserved >= $3",
                product_id,
                row["warehouse_id"],
                units,
                ts,
            )
            if changed == 1:
                await self._emit(tx, product_id, row["warehouse_id"], ts)
                taken.append((row["warehouse_id"], units))
                need -= units
        return taken

    async def _parts_hold(
        self,
        tx: Tx,
        school_id: str,
        reservation_id: str | None,
        product_id: str,
        takes: Sequence[tuple[str, int]],
        ts: int,
    ) -> str:
        """Add ``takes`` to the request's reservation (made now if it has none); its id."""
        if reservation_id is None:
            reservation_id = str(uuid.uuid4())
            await tx.execute(
                "INSERT INTO reservations (id, owner, status, created_at, expires_at, updated_at)"
                " VALUES ($1, $2, 'pending', $3, $4, $3)",
                reservation_id,
                reservation_owner(school_id),
                ts,
                NEVER_EXPIRES_US,
            )
            line_no = 0
        else:
            row = await tx.fetchrow(
                "SELECT COALESCE(MAX(line_no), -1) + 1 AS next FROM reservation_lines"
                " WHERE reservation_id = $1",
                reservation_id,
            )
            assert row is not None
            line_no = int(row["next"])
        for warehouse_id, units in takes:
            await tx.execute(
                "INSERT INTO reservation_lines (reservation_id, line_no, product_id, warehouse_id, quantity)"
                " VALUES ($1, $2, $3, $4, $5)",
                reservation_id,
                line_no,
                product_id,
                warehouse_id,
                units,
            )
            line_no += 1
        return reservation_id

    # -- the queue ---------------------------------------------------------------------------------
    async def _stock_available(
        self, tx: Tx, freed: Sequence[StockLevel], ts: int
    ) -> dict[tuple[str, str], StockLevel]:
        queues: dict[tuple[str, str], list[StockLevel]] = {}
        for level in freed:
            queues.setdefault((level.product_id, level.region), []).append(level)
        waiting = []
        for (product_id, region), levels in queues.items():
            # A row just inserted (version 1) is one no new request could have locked: look under the
            # queue's lock. Any other row this transaction holds, so a request queueing now has done so.
            inserted = any(level.version == 1 for level in levels)
            if inserted or await tx.fetchrow(
                "SELECT 1 AS ok FROM parts_backorders WHERE product_id = $1 AND region = $2 LIMIT 1",
                product_id,
                region,
            ):
                waiting.append((product_id, region, levels))
        if not waiting:
            return {}
        await self._parts_lock_keys(tx, [queue_lock_key(p, r) for p, r, _ in waiting])
        if self.db.dialect == "postgres":
            # The rows of every request the fills below will serve, locked now in one order: two fills
            # of different products that serve the same requests would otherwise take them in their
            # queues' orders, which may cross.
            served: set[str] = set()
            for product_id, region, levels in waiting:
                served |= await self._parts_served(
                    tx, product_id, region, {level.warehouse_id for level in levels}
                )
            if served:
                await tx.fetch(
                    f"SELECT id FROM parts_requests WHERE id {in_list(self.db.dialect, '$1')}"
                    " ORDER BY id FOR UPDATE",
                    list_arg(self.db.dialect, sorted(served)),
                )
        changed: dict[tuple[str, str], StockLevel] = {}
        for product_id, region, levels in waiting:
            for warehouse_id in sorted({level.warehouse_id for level in levels}):
                if await self._parts_fill(tx, product_id, region, warehouse_id, ts):
                    row = await tx.fetchrow(
                        _STOCK_SELECT + " WHERE s.product_id = $1 AND s.warehouse_id = $2",
                        product_id,
                        warehouse_id,
                    )
                    assert row is not None
                    changed[(product_id, warehouse_id)] = _stock(row)
        return changed

    async def _parts_served(self, tx: Tx, product_id: str, region: str, warehouses: set[str]) -> set[str]:
        """The requests :meth:`_parts_fill` will give units to from ``warehouses`` (a few more, at most,
        if the product cannot be reserved at all): what is available there taken by the queue's heads as
        the fills take it, without taking it."""
        rows = await tx.fetch(
            "SELECT warehouse_id, on_hand - reserved AS available FROM stock"
            f" WHERE product_id = $1 AND warehouse_id {in_list(self.db.dialect, '$2')}",
            product_id,
            list_arg(self.db.dialect, sorted(warehouses)),
        )
        available = {r["warehouse_id"]: max(0, int(r["available"])) for r in rows}
        total = sum(available.values())
        if total == 0:
            return set()
        heads = [
            [r["request_id"], int(r["backordered"]), r["policy"]]
            for r in await tx.fetch(
                "SELECT b.request_id, l.backordered, r.policy FROM parts_backorders b"
                " JOIN parts_requests r ON r.id = b.request_id"
                " JOIN parts_request_lines l ON l.request_id = b.request_id AND l.line_no = b.line_no"
                " WHERE b.product_id = $1 AND b.region = $2 ORDER BY b.seq LIMIT $3",
                product_id,
                region,
                total,  # (each line served takes a unit at least)
            )
        ]
        served: set[str] = set()
        for warehouse_id in sorted(available):
            units = available[warehouse_id]
            while heads and units > 0:
                request_id, need, policy = heads[0]
                taken = min(units, need)
                if policy == Policy.ALL_OR_NONE.value and taken < need:
                    break
                served.add(request_id)
                units -= taken
                if taken < need:
                    heads[0][1] = need - taken
                    break
                heads.pop(0)
        return served

    async def _parts_fill(self, tx: Tx, product_id: str, region: str, warehouse_id: str, ts: int) -> bool:
        """Serve the queue of ``product_id`` in ``region`` from ``warehouse_id``, head first, until the
        head cannot be served (its whole line, for all_or_none) or the queue is empty; under the queue's
        lock. Whether anything was taken."""
        filled = False
        while True:
            head = await tx.fetchrow(
                "SELECT b.seq, b.request_id, b.line_no, l.backordered, r.policy, r.school_id"
                " FROM parts_backorders b JOIN parts_requests r ON r.id = b.request_id"
                " JOIN parts_request_lines l ON l.request_id = b.request_id AND l.line_no = b.line_no"
                " WHERE b.product_id = $1 AND b.region = $2 ORDER BY b.seq LIMIT 1",
                product_id,
                region,
            )
            if head is None:
                return filled
            request_id, need = head["request_id"], int(head["backordered"])
            # The request's row before its lines: fills of its other products' queues wait here.
            held = await tx.fetchrow(
                f"SELECT reservation_id FROM parts_requests WHERE id = $1{self._parts_for_update()}",
                request_id,
            )
            assert held is not None
            takes = await self._parts_take(
                tx, head["line_no"], product_id, need, Policy(head["policy"]), region, ts, warehouse_id
            )
            got = sum(units for _, units in takes)
            if got == 0:
                return filled
            filled = True
            reservation_id = await self._parts_hold(
                tx, head["school_id"], held["reservation_id"], product_id, takes, ts
            )
            await tx.execute(
                "UPDATE parts_request_lines SET reserved = reserved + $3, backordered = backordered - $3"
                " WHERE request_id = $1 AND line_no = $2",
                request_id,
                head["line_no"],
                got,
            )
            if got == need:
                await tx.execute("DELETE FROM parts_backorders WHERE seq = $1", head["seq"])
            left = await tx.fetchrow(
                "SELECT COALESCE(SUM(backordered), 0) AS n FROM parts_request_lines WHERE request_id = $1",
                request_id,
            )
            assert left is not None
            done = int(left["n"]) == 0
            await self._parts_bump(tx, request_id, ts, PartsStatus.RESERVED if done else None, reservation_id)
            await self._parts_tell(
                tx, request_id, "reserved" if done else "line_filled", ts, line=head["line_no"], filled=got
            )
            if got < need:
                return filled  # the warehouse ran out for the head: nobody behind it skips ahead

    # -- status ------------------------------------------------------------------------------------
    async def _parts_bump(
        self,
        tx: Tx,
        request_id: str,
        ts: int,
        status: PartsStatus | None = None,
        reservation_id: str | None = None,
    ) -> None:
        args: list[Any] = [request_id, ts]
        sets = ["version = version + 1", "updated_at = $2"]
        if status is not None:
            args.append(status.value)
            sets.append(f"status = ${len(args)}")
        if reservation_id is not None:
            args.append(reservation_id)
            sets.append(f"reservation_id = ${len(args)}")
        await tx.execute(f"UPDATE parts_requests SET {', '.join(sets)} WHERE id = $1", *args)

    async def _parts_tell(self, tx: Tx, request_id: str, event: str, ts: int, **extra: Any) -> PartsRequest:
        """Append ``parts_request.{event}`` for the request as it now is (its row is this transaction's)."""
        request = await self._parts_load(tx, request_id)
        assert request is not None
        await self._parts_announce(tx, request, event, ts, **extra)
        return request

    async def _parts_announce(self, tx: Tx, request: PartsRequest, event: str, ts: int, **extra: Any) -> None:
        await self.append_event(
            tx,
            parts_stream(request.region, request.school_id),
            f"parts_request:{request.id}",
            request.version,
            parts_event(event, request, ts, **extra),
            ts,
        )

    async def transition_parts_request(
        self,
        school_id: str,
        request_id: str,
        target: PartsStatus,
        expected_version: int | None = None,
    ) -> tuple[PartsRequest, bool]:
        """Move the request to ``target`` (shipped commits its reservation, cancelled releases it and leaves
        the queue, the units going to whoever waits for them); (request, whether it changed). Asking for
        the status it has changes nothing. VersionMismatch, InvalidTransition; NotFound(parts_request)."""

        async def work(tx: Tx) -> tuple[PartsRequest, bool]:
            row = await tx.fetchrow(
                "SELECT region FROM parts_requests WHERE id = $1 AND school_id = $2", request_id, school_id
            )
            if row is None:
                raise NotFound("no such parts request", resource="parts_request", request_id=request_id)
            if target in (PartsStatus.CANCELLED, PartsStatus.SHIPPED):
                products = await tx.fetch(
                    "SELECT DISTINCT product_id FROM parts_request_lines WHERE request_id = $1", request_id
                )
                await self._parts_lock(tx, [p["product_id"] for p in products], row["region"])
            locked = await tx.fetchrow(
                "SELECT status, version, reservation_id FROM parts_requests"
                f" WHERE id = $1{self._parts_for_update()}",
                request_id,
            )
            assert locked is not None
            if expected_version is not None and locked["version"] != expected_version:
                raise VersionMismatch(
                    "the parts request changed since you read it",
                    expected=expected_version,
                    current=locked["version"],
                )
            current = PartsStatus(locked["status"])
            if current is target:
                request = await self._parts_load(tx, request_id)
                assert request is not None
                return request, False
            if target not in TRANSITIONS[current]:
                raise InvalidTransition(
                    f"the parts request is {current.value}, it cannot become {target.value}",
                    current_status=current.value,
                    requested_status=target.value,
                    allowed=",".join(sorted(s.value for s in TRANSITIONS[current])),
                )
            ts = now_us()
            reservation_id = locked["reservation_id"]
            if target is PartsStatus.CANCELLED:
                # Out of the queue first, so that the units released go to those behind it.
                await tx.execute("DELETE FROM parts_backorders WHERE request_id = $1", request_id)
                await tx.execute(
                    "UPDATE parts_request_lines SET reserved = 0, backordered = 0 WHERE request_id = $1",
                    request_id,
                )
                if reservation_id is not None:
                    await self._finish(tx, reservation_id, ReservationStatus.RELEASED, ts, tell_owner=False)
            elif target is PartsStatus.SHIPPED and reservation_id is not None:
                await self._finish(tx, reservation_id, ReservationStatus.COMMITTED, ts, tell_owner=False)
            await self._parts_bump(tx, request_id, ts, target)
            return await self._parts_tell(tx, request_id, target.value, ts), True

        return await self._write(work)
