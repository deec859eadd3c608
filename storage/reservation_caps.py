"""Reservation caps (anti-scalping, OWASP API6): how many units of one product a reservation may take,
and how many of them one owner may hold at once.

The hub decides whom caps bind (docs/security.md: service and admin tokens are exempt) and hands them
to ``Store.reserve`` and ``Store.checkout_cart``. The store checks them in the reservation's own
transaction, after its idempotency key is claimed and before any stock moves: a refusal is an
outcome like ``insufficient_stock`` — stored under the key and replayed to a retry, nothing else
changed.

* ``per_reservation``: the units of a product in one request (its lines of that product summed).
* ``per_user``: the owner's held units of the product — its pending reservations not yet past their
  expiry (committed, released and expired ones hold nothing) — plus the request's.

The per-user cap holds under any concurrency: an owner's capped reservations are checked and made one
transaction at a time. SQLite has one writer (and its group commit runs the writes of a batch one after
the other); PostgreSQL's transactions take the owner's advisory lock
(``pg_advisory_xact_lock(CAP_LOCK_CLASS, hashtext(owner))``) before they sum what the owner holds —
the generic path below and the batch function of migration 9 (:mod:`storage.pg_reserve`) alike,
always before any stock row, so the lock joins no cycle. The batch reads what its capped owners hold
once, before it locks the stock rows, and counts each reservation it makes on top (the check under
the hot row's lock is then arithmetic); the per-reservation cap needs no reading at all, so the hub
hands the batch its refusal ready-made (:func:`reservation_refusal`). Both paths answer the same
refusal, word for word (``tests/test_reservation_caps.py`` compares them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.db import Tx
from storage.models import ReservationLineRequest

CAP_CODE = "reservation_cap_exceeded"
# The first key of the owners' advisory locks ("SCAP"): two-key locks are a space of their own, apart
# from the migrations' one-key lock.
CAP_LOCK_CLASS = 0x5343_4150


@dataclass(frozen=True, slots=True)
class ReservationCaps:
    """Units of one product: in one reservation, and held by one owner at once (0: no cap)."""

    per_reservation: int = 0
    per_user: int = 0

    @property
    def active(self) -> bool:
        return self.per_reservation > 0 or self.per_user > 0

    def encode(self) -> dict[str, int]:
        """As the batch function reads them (``request->'caps'``; "user" is the one it checks)."""
        return {"reservation": self.per_reservation, "user": self.per_user}


def _wanted(lines: Sequence[ReservationLineRequest]) -> list[tuple[str, int, int]]:
    """(product_id, units, first line index) per product, in the order of their first line."""
    units: dict[str, int] = {}
    first: dict[str, int] = {}
    for index, line in enumerate(lines):
        units[line.product_id] = units.get(line.product_id, 0) + line.quantity
        first.setdefault(line.product_id, index)
    return [(product_id, units[product_id], first[product_id]) for product_id in first]


def _refusal(scope: str, detail: str, cap: int, product_id: str, line: int, requested: int) -> dict[str, Any]:
    return {
        "code": CAP_CODE,
        "detail": detail,
        "scope": scope,
        "cap": cap,
        "product_id": product_id,
        "line": line,
        "requested": requested,
    }


def reservation_refusal(
    lines: Sequence[ReservationLineRequest], caps: ReservationCaps
) -> dict[str, Any] | None:
    """The refusal's body if ``lines`` take more of a product than one reservation may, else None."""
    if caps.per_reservation > 0:
        for product_id, units, index in _wanted(lines):
            if units > caps.per_reservation:
                detail = f"a reservation may take at most {caps.per_reservation} units of a product"
                return _refusal("reservation", detail, caps.per_reservation, product_id, index, units)
    return None


async def check_caps(
    tx: Tx, dialect: str, owner: str, lines: Sequence[ReservationLineRequest], caps: ReservationCaps, ts: int
) -> dict[str, Any] | None:
    """The refusal's body if ``lines`` would pass a cap of ``owner``'s, else None (then, on PostgreSQL,
    this transaction holds the owner's lock until it ends)."""
    refusal = reservation_refusal(lines, caps)
    if refusal is not None or caps.per_user <= 0:
        return refusal
    wanted = _wanted(lines)
    if dialect == "postgres":
        await tx.execute(f"SELECT pg_advisory_xact_lock({CAP_LOCK_CLASS}, hashtext($1))", owner)
    # Everything the owner holds, by product: the owner's pending reservations (their index), then
    # their lines (by key). No condition on the product, which would tempt a planner without statistics
    # (SQLite's, PostgreSQL's on young tables) to walk every line of a hot product instead.
    rows = await tx.fetch(
        "SELECT l.product_id, SUM(l.quantity) AS held"
        " FROM reservations r JOIN reservation_lines l ON l.reservation_id = r.id"
        " WHERE r.owner = $1 AND r.status = 'pending' AND r.expires_at > $2 GROUP BY l.product_id",
        owner,
        ts,
    )
    held = {row["product_id"]: int(row["held"]) for row in rows}
    for product_id, units, index in wanted:
        already = held.get(product_id, 0)
        if already + units > caps.per_user:
            detail = f"one customer may hold at most {caps.per_user} units of a product at once"
            body = _refusal("user", detail, caps.per_user, product_id, index, units)
            body["held"] = already
            return body
    return None


# Migration 9, PostgreSQL: the per-user check of one request in the batch function (storage.pg_reserve),
# against ``held``: {"{owner}\x1f{product_id}": units}, what the batch's capped owners held when it
# began (read under their locks) plus what it reserved for them since. Returns the refusal
# {"status": 422, "body"} or NULL, as check_caps above words it. Reads no table.
PG_PAST_USER_CAP = f"""
CREATE FUNCTION synchub_past_user_cap(request JSONB, held JSONB, cap BIGINT) RETURNS JSONB
LANGUAGE plpgsql AS $fn$
DECLARE
    prefix TEXT := (request->>'owner') || chr(31);
    wanted RECORD;
    already BIGINT;
BEGIN
    IF jsonb_array_length(request->'lines') = 1 THEN
        SELECT l->>'product_id' AS pid, (l->>'quantity')::BIGINT AS qty, (l->>'index')::INTEGER AS idx
        INTO wanted FROM (SELECT request->'lines'->0 AS l) AS one;
        already := COALESCE((held->>(prefix || wanted.pid))::BIGINT, 0);
        IF already + wanted.qty <= cap THEN
            RETURN NULL;
        END IF;
    ELSE
        FOR wanted IN
            SELECT l->>'product_id' AS pid, SUM((l->>'quantity')::BIGINT)::BIGINT AS qty,
                   MIN((l->>'index')::INTEGER) AS idx
            FROM jsonb_array_elements(request->'lines') AS l
            GROUP BY l->>'product_id' ORDER BY idx
        LOOP
            already := COALESCE((held->>(prefix || wanted.pid))::BIGINT, 0);
            EXIT WHEN already + wanted.qty > cap;
        END LOOP;
        IF already + wanted.qty <= cap THEN
            RETURN NULL;
        END IF;
    END IF;
    RETURN jsonb_build_object('status', 422, 'body', jsonb_build_object(
        'code', '{CAP_CODE}',
        'detail', 'one customer may hold at most ' || cap || ' units of a product at once',
        'scope', 'user', 'cap', cap, 'product_id', wanted.pid,
        'line', wanted.idx, 'requested', wanted.qty, 'held', already));
END
$fn$
"""
