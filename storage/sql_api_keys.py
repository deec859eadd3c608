"""API keys in SQL (storage/api_keys.py states the records and the guarantees)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from storage.api_keys import ApiKey, NewSecret
from storage.db import Database, Row, Tx
from storage.errors import Conflict, NotFound

T = TypeVar("T")

# A key and the id of the key its rotation made (at most one: rotate_api_key's conditional update).
_SELECT = (
    "SELECT k.id, k.family_id, k.name, k.owner, k.scopes, k.secret_hash, k.prefix, k.created_at,"
    " k.expires_at, k.revoked_at, k.last_used_at, k.rotated_from, k.overlap_ends_at, n.id AS replaced_by"
    " FROM api_keys k LEFT JOIN api_keys n ON n.rotated_from = k.id"
)


class _Core(Protocol):
    db: Database

    async def _write(self, work: Callable[[Tx], Awaitable[T]], *, single_statement: bool = False) -> T: ...


def _key(row: Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        family_id=row["family_id"],
        name=row["name"],
        owner=row["owner"],
        scopes=tuple(json.loads(row["scopes"])),
        secret_hash=row["secret_hash"],
        prefix=row["prefix"],
        created_at=int(row["created_at"]),
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
        rotated_from=row["rotated_from"],
        overlap_ends_at=row["overlap_ends_at"],
        replaced_by=row["replaced_by"],
    )


async def _read(tx: Tx, key_id: str) -> ApiKey | None:
    row = await tx.fetchrow(f"{_SELECT} WHERE k.id = $1", key_id)
    return None if row is None else _key(row)


class ApiKeySql:
    async def create_api_key(self: _Core, key: ApiKey) -> ApiKey:
        async def work(tx: Tx) -> int:
            return await tx.execute(
                "INSERT INTO api_keys (id, family_id, name, owner, scopes, secret_hash, prefix, created_at,"
                " expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                key.id,
                key.family_id,
                key.name,
                key.owner,
                json.dumps(list(key.scopes)),
                key.secret_hash,
                key.prefix,
                key.created_at,
                key.expires_at,
            )

        await self._write(work, single_statement=True)
        return key

    async def get_api_key(self: _Core, key_id: str) -> ApiKey | None:
        async def work(tx: Tx) -> ApiKey | None:
            return await _read(tx, key_id)

        return await self.db.run(work, readonly=True, single_statement=True)

    async def list_api_keys(self: _Core, limit: int, after: tuple[int, str] | None = None) -> list[ApiKey]:
        """Newest first, keyset-paginated by (created_at, id) after ``after``."""

        async def work(tx: Tx) -> list[Row]:
            if after is None:
                return await tx.fetch(f"{_SELECT} ORDER BY k.created_at DESC, k.id DESC LIMIT $1", limit)
            return await tx.fetch(
                f"{_SELECT} WHERE k.created_at < $1 OR (k.created_at = $1 AND k.id < $2)"
                " ORDER BY k.created_at DESC, k.id DESC LIMIT $3",
                after[0],
                after[1],
                limit,
            )

        return [_key(row) for row in await self.db.run(work, readonly=True, single_statement=True)]

    async def revoke_api_key(self: _Core, key_id: str, now_us: int) -> ApiKey:
        """Stamp ``revoked_at`` (once: a second revocation keeps the first time)."""

        async def work(tx: Tx) -> ApiKey:
            await tx.execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", key_id, now_us
            )
            key = await _read(tx, key_id)
            if key is None:
                raise NotFound("no such API key", resource="api_key")
            return key

        return await self._write(work)

    async def rotate_api_key(
        self: _Core, key_id: str, successor: NewSecret, overlap_ends_at: int
    ) -> tuple[ApiKey, ApiKey]:
        """(the old key, the new one): the old works until ``overlap_ends_at``; the new one has its
        name, scopes, expiry and family. Conflict(api_key_not_rotatable) unless the old one is active."""

        async def work(tx: Tx) -> tuple[ApiKey, ApiKey]:
            now = successor.created_at
            claimed = await tx.execute(
                "UPDATE api_keys SET overlap_ends_at = $2 WHERE id = $1 AND revoked_at IS NULL"
                " AND overlap_ends_at IS NULL AND (expires_at IS NULL OR expires_at > $3)",
                key_id,
                overlap_ends_at,
                now,
            )
            if claimed != 1:
                current = await _read(tx, key_id)
                if current is None:
                    raise NotFound("no such API key", resource="api_key")
                raise Conflict(
                    f"only an active key can be rotated; this one is {current.state(now)}",
                    code="api_key_not_rotatable",
                    state=str(current.state(now)),
                )
            await tx.execute(
                "INSERT INTO api_keys (id, family_id, name, owner, scopes, secret_hash, prefix, created_at,"
                " expires_at, rotated_from)"
                " SELECT $1, family_id, name, $2, scopes, $3, $4, $5, expires_at, id"
                " FROM api_keys WHERE id = $6",
                successor.id,
                successor.owner,
                successor.secret_hash,
                successor.prefix,
                successor.created_at,
                key_id,
            )
            old, new = await _read(tx, key_id), await _read(tx, successor.id)
            assert old is not None and new is not None
            return old, new

        return await self._write(work)

    async def touch_api_key(self: _Core, key_id: str, now_us: int, interval_us: int) -> bool:
        """Set ``last_used_at`` to ``now_us`` unless it is within ``interval_us`` of it; True if set."""

        async def work(tx: Tx) -> int:
            return await tx.execute(
                "UPDATE api_keys SET last_used_at = $2 WHERE id = $1"
                " AND (last_used_at IS NULL OR last_used_at <= $3)",
                key_id,
                now_us,
                now_us - interval_us,
            )

        return await self._write(work, single_statement=True) == 1
