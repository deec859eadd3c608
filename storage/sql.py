"""SqlStore: the Store contract written once, over :mod:`storage.db`'s narrow SQL seam.

Every stock change is a single conditional statement evaluated by the database; the Python side
only decides *which* statement to run. See :mod:`storage.base` for the guarantees.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from storage.base import OutboxListener
from storage.db import Database, Row, Tx
from storage.errors import (
    Conflict,
    IdempotencyMismatch,
    InsufficientStock,
    InvalidTransition,
    NotFound,
    VersionMismatch,
)
from storage.migrations import MIGRATIONS, statements_for
from storage.models import (
    SORTS,
    IdempotentResult,
    InventoryDelta,
    NewProduct,
    OutboxEntry,
    Product,
    ProductPage,
    ProductQuery,
    ProductStatus,
    Reservation,
    ReservationLine,
    ReservationLineRequest,
    ReservationStatus,
    StockLevel,
    Warehouse,
    price_to_units,
    reservation_to_dict,
    stock_status,
    units_to_price,
)
from storage.sql_carts import CartSql
from storage.streams import inventory_stream, user_stream

_PRODUCT_COLUMNS = (
    "id, sku, name, description, category, price_units, status, attributes,"
    " low_stock_threshold, created_at, updated_at, version"
)
_STOCK_SELECT = """
    SELECT s.product_id, s.warehouse_id, w.region, s.on_hand, s.reserved, s.version, s.updated_at,
           p.sku, p.status AS product_status, p.low_stock_threshold
    FROM stock s
    JOIN warehouses w ON w.id = s.warehouse_id
    JOIN products p ON p.id = s.product_id
"""
_MAX_WAREHOUSE_ATTEMPTS = 16

T = TypeVar("T")

# The outbox entries appended by the writing transaction running in this task (see SqlStore._write):
# a context variable, so that _emit, however deep in a transaction's helpers, need not be handed a list.
_APPENDED: ContextVar[list[OutboxEntry] | None] = ContextVar("synchub_outbox_appended", default=None)


def now_us() -> int:
    return time.time_ns() // 1000


def _product(row: Row) -> Product:
    return Product(
        id=row["id"],
        sku=row["sku"],
        name=row["name"],
        description=row["description"],
        category=row["category"],
        price=units_to_price(row["price_units"]),
        status=ProductStatus(row["status"]),
        attributes=json.loads(row["attributes"]),
        low_stock_threshold=row["low_stock_threshold"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


def _stock(row: Row) -> StockLevel:
    return StockLevel(
        product_id=row["product_id"],
        warehouse_id=row["warehouse_id"],
        region=row["region"],
        on_hand=row["on_hand"],
        reserved=row["reserved"],
        version=row["version"],
        status=stock_status(
            row["product_status"], row["on_hand"] - row["reserved"], row["low_stock_threshold"]
        ),
        updated_at=row["updated_at"],
    )


class SqlStore(CartSql):
    def __init__(self, db: Database, *, hand_over_outbox: bool = False, region: str = "default") -> None:
        """``hand_over_outbox``: this process is the only one writing the database (the embedded
        SQLite store), so its commits are the outbox's order and its entries can be handed to the
        listeners as they commit. Where several processes write (PostgreSQL), entries committed
        concurrently must be read back in outbox order, and the listeners are told to read instead."""
        self.db = db
        self.backend = db.dialect
        self.region = region  # where this hub's users' private events go (storage.streams.user_stream)
        self._hand_over_outbox = hand_over_outbox
        self._outbox_listeners: list[OutboxListener] = []

    # -- writing transactions ------------------------------------------------------------------
    async def _write(self, work: Callable[[Tx], Awaitable[T]], *, single_statement: bool = False) -> T:
        """Run a writing transaction; once it has committed, announce the outbox entries it appended
        to the listeners (storage.base: "Committed entries are announced")."""
        appended: list[OutboxEntry] = []

        async def attempt(tx: Tx) -> T:
            # Set here, in whichever task runs the work (SQLite's group commit runs it in its own).
            appended.clear()  # a transaction the database aborted is run again from the start
            token = _APPENDED.set(appended)
            try:
                return await work(tx)
            finally:
                _APPENDED.reset(token)

        async def announce() -> None:
            if not appended:
                return
            if not self._hand_over_outbox:
                self._outbox_changed()
                return
            for listener in self._outbox_listeners:
                await listener.outbox_committed(appended)

        return await self.db.run(attempt, single_statement=single_statement, after_commit=announce)

    @asynccontextmanager
    async def _savepoint(self, tx: Tx) -> AsyncIterator[None]:
        """``tx.savepoint()``; rolled back, it takes back the outbox entries appended inside it."""
        appended = _APPENDED.get()
        mark = 0 if appended is None else len(appended)
        try:
            async with tx.savepoint():
                yield
        except BaseException:
            if appended is not None:
                del appended[mark:]
            raise

    def watch_outbox(self, listener: OutboxListener) -> Callable[[], None]:
        self._outbox_listeners.append(listener)

        def unwatch() -> None:
            if listener in self._outbox_listeners:
                self._outbox_listeners.remove(listener)

        return unwatch

    def _outbox_changed(self) -> None:
        for listener in self._outbox_listeners:
            listener.outbox_changed()

    # -- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        async def work(tx: Tx) -> None:
            await tx.fetchrow("SELECT 1 AS ok")

        await self.db.run(work, readonly=True, single_statement=True)

    async def migrate(self) -> list[int]:
        async def work(tx: Tx) -> list[int]:
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at BIGINT NOT NULL)"
            )
            done = {r["version"] for r in await tx.fetch("SELECT version FROM schema_migrations")}
            applied = []
            for version, description, statements in MIGRATIONS:
                if version in done:
                    continue
                for statement in statements_for(self.db.dialect, statements):
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
                    version,
                    description,
                    now_us(),
                )
                applied.append(version)
            return applied

        return await self.db.run(work, exclusive=True)

    # -- catalog -------------------------------------------------------------------------------
    async def create_product(self, new: NewProduct) -> Product:
        ts = now_us()
        product_id = str(uuid.uuid4())

        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                f"INSERT INTO products ({_PRODUCT_COLUMNS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, 1)"
                f" RETURNING {_PRODUCT_COLUMNS}",
                product_id,
                new.sku,
                new.name,
                new.description,
                new.category,
                price_to_units(new.price),
                new.status.value,
                json.dumps(new.attributes, separators=(",", ":")),
                new.low_stock_threshold,
                ts,
            )

        try:
            row = await self._write(work)
        except Conflict as exc:
            raise Conflict(f"a product with sku {new.sku!r} already exists", code="sku_taken") from exc
        assert row is not None
        return _product(row)

    async def get_product(self, product_id: str) -> Product | None:
        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(f"SELECT {_PRODUCT_COLUMNS} FROM products WHERE id = $1", product_id)

        row = await self.db.run(work, readonly=True, single_statement=True)
        return _product(row) if row else None

    async def update_product(
        self, product_id: str, changes: Mapping[str, Any], expected_version: int | None = None
    ) -> Product:
        columns: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "price":
                columns["price_units"] = price_to_units(value)
            elif name == "attributes":
                columns["attributes"] = json.dumps(value, separators=(",", ":"))
            elif name == "status":
                columns["status"] = ProductStatus(value).value
            elif name in ("sku", "name", "description", "category", "low_stock_threshold"):
                columns[name] = value
            else:
                raise ValueError(f"not an updatable product field: {name}")
        stock_affected = bool({"status", "low_stock_threshold", "sku"} & changes.keys())

        async def work(tx: Tx) -> Row:
            ts = now_us()
            args: list[Any] = [product_id, ts]
            sets = ["updated_at = $2", "version = version + 1"]
            for column, value in columns.items():
                args.append(value)
                sets.append(f"{column} = ${len(args)}")
            where = "id = $1"
            if expected_version is not None:
                args.append(expected_version)
                where += f" AND version = ${len(args)}"
            row = await tx.fetchrow(
                f"UPDATE products SET {', '.join(sets)} WHERE {where} RETURNING {_PRODUCT_COLUMNS}",
                *args,
            )
            if row is None:
                current = await tx.fetchrow("SELECT version FROM products WHERE id = $1", product_id)
                if current is None:
                    raise NotFound("no such product", resource="product", product_id=product_id)
                raise VersionMismatch(
                    "the product changed since you read it",
                    expected=expected_version,
                    current=current["version"],
                )
            if stock_affected:
                # The derived stock status depends on these fields: every stock row gets a new
                # version so that subscribers learn the new status.
                await self._touch_stock(tx, product_id, None, ts)
            return row

        try:
            return _product(await self._write(work))
        except Conflict as exc:
            raise Conflict("a product with that sku already exists", code="sku_taken") from exc

    async def delete_product(self, product_id: str, expected_version: int | None = None) -> None:
        async def work(tx: Tx) -> None:
            args: list[Any] = [product_id]
            where = "id = $1"
            if expected_version is not None:
                args.append(expected_version)
                where += " AND version = $2"
            if await tx.execute(f"DELETE FROM products WHERE {where}", *args) != 1:
                current = await tx.fetchrow("SELECT version FROM products WHERE id = $1", product_id)
                if current is None:
                    raise NotFound("no such product", resource="product", product_id=product_id)
                raise VersionMismatch(
                    "the product changed since you read it",
                    expected=expected_version,
                    current=current["version"],
                )
            # Checked after the delete: its cascade has locked the stock rows, so a reservation still in
            # flight on them has either committed (and is seen here) or will find no stock row at all.
            pending = await tx.fetchrow(
                "SELECT r.id FROM reservations r JOIN reservation_lines l"
                " ON l.reservation_id = r.id WHERE l.product_id = $1 AND r.status = 'pending'"
                " LIMIT 1",
                product_id,
            )
            if pending is not None:
                raise Conflict(
                    "the product has pending reservations",
                    code="product_has_reservations",
                    pending_reservation=pending["id"],
                )

        await self._write(work)

    async def list_products(self, query: ProductQuery) -> ProductPage:
        column, descending = SORTS[query.sort]
        clauses: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.category is not None:
            clauses.append(f"category = {arg(query.category)}")
        if query.status is not None:
            clauses.append(f"status = {arg(query.status.value)}")
        if query.price_min is not None:
            clauses.append(f"price_units >= {arg(price_to_units(query.price_min))}")
        if query.price_max is not None:
            clauses.append(f"price_units <= {arg(price_to_units(query.price_max))}")
        if query.in_stock_region is not None:
            clauses.append(
                "EXISTS (SELECT 1 FROM stock s JOIN warehouses w ON w.id = s.warehouse_id"
                " WHERE s.product_id = products.id AND s.on_hand > s.reserved"
                f" AND w.region = {arg(query.in_stock_region)})"
            )
        if query.after is not None:
            value, last_id = query.after
            if column == "name":
                valid = isinstance(value, str)
            else:
                valid = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
            if not valid or not isinstance(last_id, str):
                raise ValueError("the cursor does not belong to this sort order")
            op = "<" if descending else ">"
            clauses.append(f"({column}, id) {op} ({arg(value)}, {arg(last_id)})")
        direction = "DESC" if descending else "ASC"
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            f"SELECT {_PRODUCT_COLUMNS} FROM products {where}"
            f" ORDER BY {column} {direction}, id {direction} LIMIT {arg(query.limit + 1)}"
        )

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(sql, *args)

        rows = await self.db.run(work, readonly=True, single_statement=True)
        items = [_product(r) for r in rows[: query.limit]]
        next_after = None
        if len(rows) > query.limit:
            last = rows[query.limit - 1]
            next_after = (last[column], last["id"])
        return ProductPage(items=items, next_after=next_after)

    # -- warehouses and stock ------------------------------------------------------------------
    async def create_warehouse(self, warehouse: Warehouse) -> Warehouse:
        async def work(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO warehouses (id, region, name) VALUES ($1, $2, $3)",
                warehouse.id,
                warehouse.region,
                warehouse.name,
            )

        try:
            await self._write(work)
        except Conflict as exc:
            raise Conflict(f"warehouse {warehouse.id!r} already exists", code="warehouse_exists") from exc
        return warehouse

    async def get_warehouse(self, warehouse_id: str) -> Warehouse | None:
        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow("SELECT id, region, name FROM warehouses WHERE id = $1", warehouse_id)

        row = await self.db.run(work, readonly=True, single_statement=True)
        return Warehouse(row["id"], row["region"], row["name"]) if row else None

    async def list_warehouses(self, region: str | None = None) -> list[Warehouse]:
        async def work(tx: Tx) -> list[Row]:
            if region is None:
                return await tx.fetch("SELECT id, region, name FROM warehouses ORDER BY id")
            return await tx.fetch(
                "SELECT id, region, name FROM warehouses WHERE region = $1 ORDER BY id", region
            )

        return [
            Warehouse(r["id"], r["region"], r["name"])
            for r in await self.db.run(work, readonly=True, single_statement=True)
        ]

    async def _require_product_and_warehouse(self, tx: Tx, product_id: str, warehouse_id: str) -> None:
        if await tx.fetchrow("SELECT 1 AS ok FROM products WHERE id = $1", product_id) is None:
            raise NotFound("no such product", resource="product", product_id=product_id)
        if await tx.fetchrow("SELECT 1 AS ok FROM warehouses WHERE id = $1", warehouse_id) is None:
            raise NotFound("no such warehouse", resource="warehouse", warehouse_id=warehouse_id)

    async def _emit(self, tx: Tx, product_id: str, warehouse_id: str, ts: int) -> StockLevel:
        """Read the stock row just changed and append its delta to the outbox."""
        row = await tx.fetchrow(
            _STOCK_SELECT + " WHERE s.product_id = $1 AND s.warehouse_id = $2",
            product_id,
            warehouse_id,
        )
        assert row is not None
        level = _stock(row)
        delta = InventoryDelta(
            product_id=level.product_id,
            sku=row["sku"],
            warehouse_id=level.warehouse_id,
            region=level.region,
            on_hand=level.on_hand,
            reserved=level.reserved,
            available=level.available,
            status=level.status.value,
            version=level.version,
            ts=ts,
        )
        await self._append(
            tx,
            inventory_stream(level.region),
            f"{product_id}/{warehouse_id}",
            level.version,
            _json_bytes(delta.to_dict()),
            ts,
            product_id,
            warehouse_id,
        )
        return level

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
        entries = _APPENDED.get()
        if entries is not None:
            entries.append(OutboxEntry(appended["seq"], stream, key, version, payload))

    async def append_event(
        self, tx: Tx, stream: str, key: str, version: int, payload: dict[str, Any], ts: int
    ) -> None:
        """Append an event to the outbox in ``tx``: published to ``stream`` once per (key, version)."""
        await self._append(tx, stream, key, version, _json_bytes(payload), ts)

    async def user_event(self, tx: Tx, sub: str, payload: dict[str, Any], ts: int) -> None:
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
            user_stream(self.region, sub),
            f"user:{sub}",
            version,
            {**payload, "sub": sub, "version": version, "ts": ts},
            ts,
        )

    async def _touch_stock(self, tx: Tx, product_id: str, warehouse_id: str | None, ts: int) -> None:
        rows = await tx.fetch(
            "UPDATE stock SET version = version + 1, updated_at = $2 WHERE product_id = $1"
            " RETURNING warehouse_id",
            product_id,
            ts,
        )
        for row in sorted(rows, key=lambda r: r["warehouse_id"]):
            await self._emit(tx, product_id, row["warehouse_id"], ts)

    async def set_stock(self, product_id: str, warehouse_id: str, on_hand: int) -> StockLevel:
        async def work(tx: Tx) -> StockLevel:
            ts = now_us()
            await self._require_product_and_warehouse(tx, product_id, warehouse_id)
            changed = await tx.execute(
                "INSERT INTO stock (product_id, warehouse_id, on_hand, reserved, version, updated_at)"
                " VALUES ($1, $2, $3, 0, 1, $4)"
                " ON CONFLICT (product_id, warehouse_id) DO UPDATE"
                " SET on_hand = excluded.on_hand, version = stock.version + 1,"
                " updated_at = excluded.updated_at"
                " WHERE stock.reserved <= excluded.on_hand",
                product_id,
                warehouse_id,
                on_hand,
                ts,
            )
            if changed != 1:
                raise InsufficientStock(
                    "on_hand cannot be set below the quantity already reserved",
                    product_id=product_id,
                    warehouse_id=warehouse_id,
                )
            return await self._emit(tx, product_id, warehouse_id, ts)

        return await self._write(work)

    async def adjust_stock(self, product_id: str, warehouse_id: str, delta: int) -> StockLevel:
        async def work(tx: Tx) -> StockLevel:
            ts = now_us()
            await self._require_product_and_warehouse(tx, product_id, warehouse_id)
            if delta > 0:
                # An upsert, so that concurrent first deliveries to a warehouse do not collide.
                changed = await tx.execute(
                    "INSERT INTO stock (product_id, warehouse_id, on_hand, reserved, version, updated_at)"
                    " VALUES ($1, $2, $3, 0, 1, $4)"
                    " ON CONFLICT (product_id, warehouse_id) DO UPDATE"
                    " SET on_hand = stock.on_hand + excluded.on_hand, version = stock.version + 1,"
                    " updated_at = excluded.updated_at",
                    product_id,
                    warehouse_id,
                    delta,
                    ts,
                )
            else:
                changed = await tx.execute(
                    "UPDATE stock SET on_hand = on_hand + $3, version = version + 1, updated_at = $4"
                    " WHERE product_id = $1 AND warehouse_id = $2 AND on_hand + $3 >= reserved",
                    product_id,
                    warehouse_id,
                    delta,
                    ts,
                )
            if changed != 1:
                raise InsufficientStock(
                    "the adjustment would take on_hand below the quantity reserved",
                    product_id=product_id,
                    warehouse_id=warehouse_id,
                )
            return await self._emit(tx, product_id, warehouse_id, ts)

        return await self._write(work)

    async def get_inventory(self, product_id: str) -> list[StockLevel]:
        async def work(tx: Tx) -> list[Row] | None:
            if await tx.fetchrow("SELECT 1 AS ok FROM products WHERE id = $1", product_id) is None:
                return None
            return await tx.fetch(
                _STOCK_SELECT + " WHERE s.product_id = $1 ORDER BY s.warehouse_id", product_id
            )

        rows = await self.db.run(work, readonly=True)
        if rows is None:
            raise NotFound("no such product", resource="product", product_id=product_id)
        return [_stock(r) for r in rows]

    async def list_stock(
        self,
        region: str,
        product_id: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 1000,
    ) -> list[tuple[StockLevel, str]]:
        """Current stock rows of a region (optionally one product) with their sku, keyset-paged by
        (product_id, warehouse_id): the snapshot a client resyncs from."""
        clauses = ["w.region = $1"]
        args: list[Any] = [region]
        if product_id is not None:
            args.append(product_id)
            clauses.append(f"s.product_id = ${len(args)}")
        if after is not None:
            args.extend(after)
            clauses.append(f"(s.product_id, s.warehouse_id) > (${len(args) - 1}, ${len(args)})")
        args.append(limit)
        sql = (
            _STOCK_SELECT
            + f" WHERE {' AND '.join(clauses)} ORDER BY s.product_id, s.warehouse_id LIMIT ${len(args)}"
        )

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(sql, *args)

        return [(_stock(r), r["sku"]) for r in await self.db.run(work, readonly=True, single_statement=True)]

    # -- reservations --------------------------------------------------------------------------
    async def reserve(
        self,
        owner: str,
        idempotency_key: str,
        request_hash: str,
        lines: Sequence[ReservationLineRequest],
        ttl_seconds: int,
    ) -> IdempotentResult:
        async def work(tx: Tx) -> IdempotentResult:
            ts = now_us()
            claimed = await tx.execute(
                "INSERT INTO idempotency_keys (owner, key, request_hash, status, body, created_at)"
                " VALUES ($1, $2, $3, 0, '', $4) ON CONFLICT (owner, key) DO NOTHING",
                owner,
                idempotency_key,
                request_hash,
                ts,
            )
            if claimed != 1:
                # Another request with this key committed first (PostgreSQL made us wait for it).
                row = await tx.fetchrow(
                    "SELECT request_hash, status, body FROM idempotency_keys WHERE owner = $1 AND key = $2",
                    owner,
                    idempotency_key,
                )
                assert row is not None
                if row["request_hash"] != request_hash:
                    raise IdempotencyMismatch("this Idempotency-Key was used with a different request body")
                return IdempotentResult(row["status"], json.loads(row["body"]), replayed=True)

            status, body = await self._reserve_lines(tx, owner, lines, ttl_seconds, ts)
            await tx.execute(
                "UPDATE idempotency_keys SET status = $3, body = $4 WHERE owner = $1 AND key = $2",
                owner,
                idempotency_key,
                status,
                json.dumps(body, separators=(",", ":")),
            )
            return IdempotentResult(status, body, replayed=False)

        return await self._write(work)

    async def _reserve_lines(
        self,
        tx: Tx,
        owner: str,
        lines: Sequence[ReservationLineRequest],
        ttl_seconds: int,
        ts: int,
    ) -> tuple[int, dict[str, Any]]:
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
                return 409, {"code": "insufficient_stock", "detail": exc.message, **exc.details}
            return 404, {"code": "product_not_found", "detail": exc.message, **exc.details}
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
        await self.user_event(tx, owner, {"type": "reservation.created", "reservation": body}, ts)
        return 201, body

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
        self, tx: Tx, reservation_id: str, target: ReservationStatus, ts: int
    ) -> tuple[Reservation, bool]:
        """Move a pending reservation to ``target`` and settle its stock, exactly once.

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
                await self._emit(tx, line.product_id, line.warehouse_id, ts)
            # changed == 0 only if the product was deleted meanwhile, which delete_product
            # refuses while reservations are pending.
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
