"""Schools and their assets in SQL (storage/parts.py states what they are): optimistic versions, the API
keys bound to a school, keyset pages."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from storage.db import Row, Tx
from storage.errors import Conflict, NotFound, VersionMismatch
from storage.parts import Asset, AssetKind, School
from storage.sql_core import SqlCore, now_us

_SCHOOL_COLUMNS = "id, name, region, created_at, updated_at, version"
_ASSET_COLUMNS = "id, school_id, asset_tag, kind, make, model, year, created_at, updated_at, version"
_ASSET_FIELDS = ("asset_tag", "kind", "make", "model", "year")


def in_list(dialect: str, placeholder: str) -> str:
    """``IN`` a bound list of text: PostgreSQL binds an array, SQLite a JSON array (:func:`list_arg`)."""
    if dialect == "postgres":
        return f"= ANY({placeholder}::text[])"
    return f"IN (SELECT value FROM json_each({placeholder}))"


def list_arg(dialect: str, values: Sequence[str]) -> Any:
    return list(values) if dialect == "postgres" else json.dumps(list(values))


def _asset(row: Row) -> Asset:
    return Asset(
        id=row["id"],
        school_id=row["school_id"],
        asset_tag=row["asset_tag"],
        kind=AssetKind(row["kind"]),
        make=row["make"],
        model=row["model"],
        year=row["year"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


class SchoolSql(SqlCore):
    # -- schools -------------------------------------------------------------------------------
    async def _school_key_families(self, tx: Tx, school_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        rows = await tx.fetch(
            "SELECT school_id, key_family FROM school_api_keys"
            f" WHERE school_id {in_list(self.db.dialect, '$1')} ORDER BY school_id, key_family",
            list_arg(self.db.dialect, school_ids),
        )
        keys: dict[str, list[str]] = {}
        for row in rows:
            keys.setdefault(row["school_id"], []).append(row["key_family"])
        return {school_id: tuple(families) for school_id, families in keys.items()}

    async def _school_records(self, tx: Tx, rows: Sequence[Row]) -> list[School]:
        keys = await self._school_key_families(tx, [r["id"] for r in rows]) if rows else {}
        return [
            School(
                id=r["id"],
                name=r["name"],
                region=r["region"],
                api_keys=keys.get(r["id"], ()),
                created_at=r["created_at"],
                updated_at=r["updated_at"],
                version=r["version"],
            )
            for r in rows
        ]

    async def _bind_school_keys(self, tx: Tx, school_id: str, families: Sequence[str]) -> None:
        await tx.execute("DELETE FROM school_api_keys WHERE school_id = $1", school_id)
        for family in sorted(set(families)):
            await tx.execute(
                "INSERT INTO school_api_keys (school_id, key_family) VALUES ($1, $2)", school_id, family
            )

    async def create_school(self, school: School) -> School:
        async def work(tx: Tx) -> School:
            ts = now_us()
            row = await tx.fetchrow(
                f"INSERT INTO schools ({_SCHOOL_COLUMNS}) VALUES ($1, $2, $3, $4, $4, 1)"
                f" RETURNING {_SCHOOL_COLUMNS}",
                school.id,
                school.name,
                school.region,
                ts,
            )
            assert row is not None
            await self._bind_school_keys(tx, school.id, school.api_keys)
            return (await self._school_records(tx, [row]))[0]

        try:
            return await self._write(work)
        except Conflict as exc:
            raise Conflict(f"school {school.id!r} already exists", code="school_exists") from exc

    async def get_school(self, school_id: str) -> School | None:
        async def work(tx: Tx) -> School | None:
            row = await tx.fetchrow(f"SELECT {_SCHOOL_COLUMNS} FROM schools WHERE id = $1", school_id)
            return (await self._school_records(tx, [row]))[0] if row else None

        return await self.db.run(work, readonly=True)

    async def list_schools(
        self, limit: int, after: str | None = None, key_family: str | None = None
    ) -> list[School]:
        """Schools by id, after ``after``; with ``key_family``, only those bound to that key."""
        clauses: list[str] = []
        args: list[Any] = []
        if key_family is not None:
            args.append(key_family)
            clauses.append(f"id IN (SELECT school_id FROM school_api_keys WHERE key_family = ${len(args)})")
        if after is not None:
            args.append(after)
            clauses.append(f"id > ${len(args)}")
        args.append(limit)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {_SCHOOL_COLUMNS} FROM schools {where} ORDER BY id LIMIT ${len(args)}"

        async def work(tx: Tx) -> list[School]:
            return await self._school_records(tx, await tx.fetch(sql, *args))

        return await self.db.run(work, readonly=True)

    async def update_school(
        self, school_id: str, changes: Mapping[str, Any], expected_version: int | None = None
    ) -> School:
        """``changes``: ``name`` and/or ``api_keys`` (key families; the whole set)."""

        async def work(tx: Tx) -> School:
            ts = now_us()
            args: list[Any] = [school_id, ts]
            sets = ["updated_at = $2", "version = version + 1"]
            if "name" in changes:
                args.append(changes["name"])
                sets.append(f"name = ${len(args)}")
            where = "id = $1"
            if expected_version is not None:
                args.append(expected_version)
                where += f" AND version = ${len(args)}"
            row = await tx.fetchrow(
                f"UPDATE schools SET {', '.join(sets)} WHERE {where} RETURNING {_SCHOOL_COLUMNS}", *args
            )
            if row is None:
                current = await tx.fetchrow("SELECT version FROM schools WHERE id = $1", school_id)
                if current is None:
                    raise NotFound("no such school", resource="school", school_id=school_id)
                raise VersionMismatch(
                    "the school changed since you read it",
                    expected=expected_version,
                    current=current["version"],
                )
            if "api_keys" in changes:
                await self._bind_school_keys(tx, school_id, changes["api_keys"])
            return (await self._school_records(tx, [row]))[0]

        return await self._write(work)

    # -- assets --------------------------------------------------------------------------------
    async def create_asset(self, asset: Asset) -> Asset:
        async def work(tx: Tx) -> Row:
            ts = now_us()
            if await tx.fetchrow("SELECT 1 AS ok FROM schools WHERE id = $1", asset.school_id) is None:
                raise NotFound("no such school", resource="school", school_id=asset.school_id)
            row = await tx.fetchrow(
                f"INSERT INTO school_assets ({_ASSET_COLUMNS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, 1)"
                f" RETURNING {_ASSET_COLUMNS}",
                asset.id,
                asset.school_id,
                asset.asset_tag,
                asset.kind.value,
                asset.make,
                asset.model,
                asset.year,
                ts,
            )
            assert row is not None
            return row

        try:
            return _asset(await self._write(work))
        except Conflict as exc:
            raise Conflict(
                f"the school has an asset tagged {asset.asset_tag!r} already", code="asset_tag_taken"
            ) from exc

    async def get_asset(self, school_id: str, asset_id: str) -> Asset | None:
        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                f"SELECT {_ASSET_COLUMNS} FROM school_assets WHERE id = $1 AND school_id = $2",
                asset_id,
                school_id,
            )

        row = await self.db.run(work, readonly=True, single_statement=True)
        return _asset(row) if row else None

    async def list_assets(
        self, school_id: str, limit: int, after: tuple[str, str] | None = None
    ) -> list[Asset]:
        """A school's assets by asset tag, after (asset_tag, id)."""
        args: list[Any] = [school_id]
        where = "school_id = $1"
        if after is not None:
            args.extend(after)
            where += " AND (asset_tag, id) > ($2, $3)"
        args.append(limit)
        sql = (
            f"SELECT {_ASSET_COLUMNS} FROM school_assets WHERE {where}"
            f" ORDER BY asset_tag, id LIMIT ${len(args)}"
        )

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(sql, *args)

        return [_asset(r) for r in await self.db.run(work, readonly=True, single_statement=True)]

    async def update_asset(
        self, school_id: str, asset_id: str, changes: Mapping[str, Any], expected_version: int | None = None
    ) -> Asset:
        async def work(tx: Tx) -> Row:
            ts = now_us()
            args: list[Any] = [asset_id, school_id, ts]
            sets = ["updated_at = $3", "version = version + 1"]
            for name in _ASSET_FIELDS:
                if name in changes:
                    value = changes[name]
                    args.append(value.value if isinstance(value, AssetKind) else value)
                    sets.append(f"{name} = ${len(args)}")
            where = "id = $1 AND school_id = $2"
            if expected_version is not None:
                args.append(expected_version)
                where += f" AND version = ${len(args)}"
            row = await tx.fetchrow(
                f"UPDATE school_assets SET {', '.join(sets)} WHERE {where} RETURNING {_ASSET_COLUMNS}", *args
            )
            if row is None:
                current = await tx.fetchrow(
                    "SELECT version FROM school_assets WHERE id = $1 AND school_id = $2", asset_id, school_id
                )
                if current is None:
                    raise NotFound("no such asset", resource="asset", asset_id=asset_id)
                raise VersionMismatch(
                    "the asset changed since you read it",
                    expected=expected_version,
                    current=current["version"],
                )
            return row

        try:
            return _asset(await self._write(work))
        except Conflict as exc:
            raise Conflict("the school has an asset with that tag already", code="asset_tag_taken") from exc
