"""Warehouses and stock in SQL: every stock change is one conditional statement evaluated by the
database, and appends the row's new state to the outbox in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage.db import Row, Tx
from storage.errors import Conflict, InsufficientStock, NotFound
from storage.models import InventoryDelta, StockLevel, Warehouse, stock_status
from storage.sql_core import now_us
from storage.sql_outbox import OutboxSql, _json_bytes
from storage.streams import inventory_stream

_STOCK_SELECT = """
    SELECT s.product_id, s.warehouse_id, w.region, s.on_hand, s.reserved, s.version, s.updated_at,
           p.sku, p.status AS product_status, p.low_stock_threshold
    FROM stock s
    JOIN warehouses w ON w.id = s.warehouse_id
    JOIN products p ON p.id = s.product_id
"""


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


class StockSql(OutboxSql):
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

    async def _stock_available(
        self, tx: Tx, freed: Sequence[StockLevel], ts: int
    ) -> dict[tuple[str, str], StockLevel]:
        """Units became available at the stock rows ``freed`` (set or adjusted upwards, a reservation
        released or expired), which ``tx`` has locked: a hook for the parts requests' backorder queues,
        which take them in the same transaction (storage.sql_parts). Returns the rows it changed again,
        as they are now (nothing here)."""
        return {}

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
            level = await self._emit(tx, product_id, warehouse_id, ts)
            taken = await self._stock_available(tx, [level], ts)
            return taken.get((product_id, warehouse_id), level)

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
            level = await self._emit(tx, product_id, warehouse_id, ts)
            if delta <= 0:
                return level
            taken = await self._stock_available(tx, [level], ts)
            return taken.get((product_id, warehouse_id), level)

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
