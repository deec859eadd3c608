"""Users' personal data in SQL: profiles, a subject's export and its erasure (see
:mod:`storage.privacy` for the guarantees)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from storage.behaviour import BehaviourData
from storage.db import Database, Row, Tx
from storage.errors import VersionMismatch
from storage.models import Reservation
from storage.privacy import (
    PSEUDONYM_PREFIX,
    AuditEntry,
    DeviceReplica,
    Erasure,
    HelpfulVote,
    ReviewReport,
    UserData,
    UserProfile,
)
from storage.sql_audit import AUDIT_COLUMNS, audit_entry, insert_audit
from storage.sql_carts import _CART_COLUMNS, DecodedCarts
from storage.sql_carts import _document as cart_document
from storage.sql_review_reads import _COLUMNS as REVIEW_COLUMNS
from storage.sql_review_reads import _document as review_document
from storage.streams import user_stream

T = TypeVar("T")

_PROFILE_COLUMNS = (
    "sub, display_name, email_ciphertext, phone_ciphertext, key_id, version, created_at, updated_at"
)
_LOCKED_PROFILE = {
    "sqlite": f"SELECT {_PROFILE_COLUMNS} FROM user_profiles WHERE sub = $1",
    "postgres": f"SELECT {_PROFILE_COLUMNS} FROM user_profiles WHERE sub = $1 FOR UPDATE",
}
_LOCKED_CARTS = {
    "sqlite": "SELECT id, region, version FROM carts WHERE owner = $1 ORDER BY id",
    "postgres": "SELECT id, region, version FROM carts WHERE owner = $1 ORDER BY id FOR UPDATE",
}


class _Core(Protocol):
    db: Database
    decoded_carts: DecodedCarts

    async def _write(self, work: Callable[[Tx], Awaitable[T]], *, single_statement: bool = False) -> T: ...
    async def append_event(
        self, tx: Tx, stream: str, key: str, version: int, payload: dict[str, Any], ts: int
    ) -> None: ...
    async def user_event(
        self, tx: Tx, sub: str, payload: dict[str, Any], ts: int, *, region: str | None = None
    ) -> None: ...
    async def _load_reservation(self, tx: Tx, reservation_id: str) -> Reservation | None: ...
    async def _behaviour_data(self, tx: Tx, sub: str) -> BehaviourData: ...
    async def _erase_behaviour(self, tx: Tx, sub: str) -> int: ...


def _profile(row: Row) -> UserProfile:
    return UserProfile(
        sub=row["sub"],
        display_name=row["display_name"],
        email_ciphertext=row["email_ciphertext"],
        phone_ciphertext=row["phone_ciphertext"],
        key_id=row["key_id"],
        version=int(row["version"]),
        created_at=int(row["created_at"]),
        updated_at=int(row["updated_at"]),
    )


async def _pseudonymise(tx: Tx, table: str, column: str, sub: str, pseudonym: str) -> int:
    """``column`` of ``table``'s rows keyed (review_id, column): ``sub`` becomes ``pseudonym``; a row the
    pseudonym already has for that review (an earlier erasure's) is deleted instead."""
    changed = await tx.execute(
        f"UPDATE {table} SET {column} = $2 WHERE {column} = $1 AND NOT EXISTS"
        f" (SELECT 1 FROM {table} other WHERE other.review_id = {table}.review_id"
        f" AND other.{column} = $2)",
        sub,
        pseudonym,
    )
    return changed + await tx.execute(f"DELETE FROM {table} WHERE {column} = $1", sub)


class PrivacySql:
    # -- profiles ----------------------------------------------------------------------------------

    async def get_profile(self: _Core, sub: str) -> UserProfile | None:
        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(f"SELECT {_PROFILE_COLUMNS} FROM user_profiles WHERE sub = $1", sub)

        row = await self.db.run(work, readonly=True, single_statement=True)
        return None if row is None else _profile(row)

    async def put_profile(
        self: _Core, profile: UserProfile, expected_version: int | None = None
    ) -> UserProfile:
        """Write the whole profile (created at version 1, then +1 per write). With ``expected_version``
        (0: it must not exist yet) VersionMismatch if the stored version differs."""

        async def work(tx: Tx) -> UserProfile:
            ts = time.time_ns() // 1000
            if expected_version is not None:
                row = await tx.fetchrow(_LOCKED_PROFILE[self.db.dialect], profile.sub)
                current = 0 if row is None else int(row["version"])
                if current != expected_version:
                    raise VersionMismatch("the profile changed since it was read", current_version=current)
            row = await tx.fetchrow(
                f"INSERT INTO user_profiles ({_PROFILE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, 1, $6, $6)"
                " ON CONFLICT (sub) DO UPDATE SET display_name = excluded.display_name,"
                " email_ciphertext = excluded.email_ciphertext, phone_ciphertext = excluded.phone_ciphertext,"
                " key_id = excluded.key_id, version = user_profiles.version + 1,"
                f" updated_at = excluded.updated_at RETURNING {_PROFILE_COLUMNS}",
                profile.sub,
                profile.display_name,
                profile.email_ciphertext,
                profile.phone_ciphertext,
                profile.key_id,
                ts,
            )
            assert row is not None
            return _profile(row)

        return await self._write(work)

    # -- export ------------------------------------------------------------------------------------

    async def user_data(self: _Core, sub: str) -> UserData:
        """Everything held about ``sub``, read in one transaction."""

        async def work(tx: Tx) -> UserData:
            profile = await tx.fetchrow(f"SELECT {_PROFILE_COLUMNS} FROM user_profiles WHERE sub = $1", sub)
            carts = await tx.fetch(
                f"SELECT {_CART_COLUMNS} FROM carts WHERE owner = $1 ORDER BY created_at, id", sub
            )
            reviews = await tx.fetch(
                f"SELECT {REVIEW_COLUMNS}, state FROM reviews WHERE author = $1 ORDER BY created_at, id", sub
            )
            votes = await tx.fetch(
                "SELECT review_id, created_at FROM review_votes WHERE voter = $1"
                " ORDER BY created_at, review_id",
                sub,
            )
            reports = await tx.fetch(
                "SELECT review_id, reason, created_at FROM review_reports WHERE reporter = $1"
                " ORDER BY created_at, review_id",
                sub,
            )
            reservation_ids = await tx.fetch(
                "SELECT id FROM reservations WHERE owner = $1 ORDER BY created_at, id", sub
            )
            reservations = []
            for row in reservation_ids:
                reservation = await self._load_reservation(tx, row["id"])
                if reservation is not None:
                    reservations.append(reservation)
            devices = await tx.fetch(
                "SELECT replica_id, created_at FROM replicas WHERE owner = $1"
                " ORDER BY created_at, replica_id",
                sub,
            )
            audit = await tx.fetch(
                f"SELECT {AUDIT_COLUMNS} FROM audit_log"
                " WHERE actor_sub = $1 OR (target_kind = 'user' AND target_id = $1) ORDER BY seq",
                sub,
            )
            return UserData(
                sub=sub,
                profile=None if profile is None else _profile(profile),
                carts=[cart_document(r, self.decoded_carts) for r in carts],
                reviews=[review_document(r, with_state=True) for r in reviews],
                votes=[HelpfulVote(r["review_id"], int(r["created_at"])) for r in votes],
                reports=[ReviewReport(r["review_id"], r["reason"], int(r["created_at"])) for r in reports],
                reservations=reservations,
                devices=[DeviceReplica(r["replica_id"], int(r["created_at"])) for r in devices],
                audit=[audit_entry(r) for r in audit],
                behaviour=await self._behaviour_data(tx, sub),
            )

        return await self.db.run(work, readonly=True)

    # -- erasure -----------------------------------------------------------------------------------

    async def erase_user(self: _Core, sub: str, pseudonym: str, entry: AuditEntry) -> Erasure:
        """Erase what is left of ``sub`` once its reviews are erased (storage.privacy, "Erasure"), and
        append ``entry`` (its detail given the counts) in the same transaction."""
        if not pseudonym.startswith(PSEUDONYM_PREFIX) or pseudonym == sub:
            raise ValueError(f"a pseudonym starts with {PSEUDONYM_PREFIX!r} and is not the subject")

        async def work(tx: Tx) -> Erasure:
            ts = time.time_ns() // 1000
            carts = await tx.fetch(_LOCKED_CARTS[self.db.dialect], sub)
            for cart in carts:
                cart_id, region, version = cart["id"], cart["region"], int(cart["version"]) + 1
                await self.append_event(
                    tx,
                    user_stream(region, sub),
                    f"cart:{cart_id}",
                    version,
                    {"type": "cart.deleted", "cart_id": cart_id, "version": version, "ts": ts},
                    ts,
                )
                await self.user_event(
                    tx,
                    sub,
                    {"type": "cart.status", "cart_id": cart_id, "status": "deleted"},
                    ts,
                    region=region,
                )
                await tx.execute("DELETE FROM cart_mutations WHERE cart_id = $1", cart_id)
                await tx.execute(
                    "UPDATE carts SET owner = $2, state = $3, version = $4,"
                    " closed_at = COALESCE(closed_at, $5), reservation_id = NULL, updated_at = $5"
                    " WHERE id = $1",
                    cart_id,
                    pseudonym,
                    b"",
                    version,
                    ts,
                )
            reservations = await tx.execute(
                "UPDATE reservations SET owner = $2 WHERE owner = $1", sub, pseudonym
            )
            await tx.execute("DELETE FROM idempotency_keys WHERE owner = $1", sub)
            reviews = await tx.execute(
                "UPDATE reviews SET author = $2 WHERE author = $1 AND status = 'erased'", sub, pseudonym
            )
            left = await tx.fetchrow("SELECT COUNT(*) AS n FROM reviews WHERE author = $1", sub)
            votes = await _pseudonymise(tx, "review_votes", "voter", sub, pseudonym)
            reports = await _pseudonymise(tx, "review_reports", "reporter", sub, pseudonym)
            audited = await tx.execute(
                "UPDATE audit_log SET actor_sub = $2 WHERE actor_sub = $1", sub, pseudonym
            ) + await tx.execute(
                "UPDATE audit_log SET target_id = $2 WHERE target_kind = 'user' AND target_id = $1",
                sub,
                pseudonym,
            )
            deleted = await tx.execute("DELETE FROM user_profiles WHERE sub = $1", sub)
            behaviour_events = await self._erase_behaviour(tx, sub)
            erasure = Erasure(
                carts_deleted=len(carts),
                reservations=reservations,
                reviews=reviews,
                reviews_left=int(left["n"]) if left is not None else 0,
                votes=votes,
                reports=reports,
                audit_entries=audited,
                profile_deleted=deleted == 1,
                entry=entry,
                behaviour_events=behaviour_events,
            )
            stored = await insert_audit(tx, replace(entry, detail={**entry.detail, **erasure.counts()}), ts)
            return replace(erasure, entry=stored)

        return await self._write(work)
