"""The catalog in SQL: products (with optimistic versions), and the stock events a product change
implies (a status, SKU or threshold change re-emits its stock rows)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from storage.attributes import attribute_conditions
from storage.db import Row, Tx
from storage.errors import Conflict, NotFound, VersionMismatch
from storage.models import (
    SORTS,
    NewProduct,
    Product,
    ProductPage,
    ProductQuery,
    ProductStatus,
    price_to_units,
    units_to_price,
)
from storage.reviews import RatingAggregate
from storage.sql_core import now_us
from storage.sql_stock import StockSql

_WRITTEN_COLUMNS = (
    "id, sku, name, description, category, price_units, status, attributes,"
    " low_stock_threshold, created_at, updated_at, version"
)
# (the rating columns are written by reviews only: storage/sql_reviews.py)
_PRODUCT_COLUMNS = (
    _WRITTEN_COLUMNS + ", rating_count, rating_total, rating_1, rating_2, rating_3, rating_4, rating_5,"
    " rating_version"
)


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
        rating=RatingAggregate(
            row["rating_count"],
            row["rating_total"],
            (row["rating_1"], row["rating_2"], row["rating_3"], row["rating_4"], row["rating_5"]),
        ),
        rating_version=row["rating_version"],
    )


class CatalogSql(StockSql):
    # -- catalog -------------------------------------------------------------------------------
    async def create_product(self, new: NewProduct) -> Product:
        ts = now_us()
        product_id = str(uuid.uuid4())

        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                f"INSERT INTO products ({_WRITTEN_COLUMNS})"
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
            waiting = await tx.fetchrow(
                "SELECT request_id FROM parts_backorders WHERE product_id = $1 LIMIT 1", product_id
            )
            if waiting is not None:
                raise Conflict(
                    "parts requests wait for the product (backordered)",
                    code="product_has_backorders",
                    parts_request=waiting["request_id"],
                )

        await self._write(work)

    async def list_products(self, query: ProductQuery) -> ProductPage:
        sql, args = self.product_listing(query)
        column = SORTS[query.sort][0]

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(sql, *args)

        rows = await self.db.run(work, readonly=True, single_statement=True)
        items = [_product(r) for r in rows[: query.limit]]
        next_after = None
        if len(rows) > query.limit:
            last = rows[query.limit - 1]
            next_after = (last[column], last["id"])
        return ProductPage(items=items, next_after=next_after)

    def product_listing(self, query: ProductQuery) -> tuple[str, list[Any]]:
        """The statement and arguments of a page of ``query`` (apart, so that its plan can be shown:
        tests/test_parts_requests.py, bench/parts.py)."""
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
        if query.min_rating is not None:
            # rating_score is the average × 10,000 (integer division, so a product averaging exactly
            # the bound is kept)
            score = int(query.min_rating * 10_000)
            clauses.append(f"rating_count > 0 AND rating_score >= {arg(score)}")
        # attr.*: the products' free JSON attributes (storage/attributes.py; PostgreSQL's GIN index)
        clauses.extend(attribute_conditions(self.db.dialect, query.attributes, arg))
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
        return sql, args
