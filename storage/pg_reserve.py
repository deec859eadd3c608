"""Reservations on PostgreSQL in batches: one transaction, one round trip, for every concurrent request.

A reservation of a hot SKU is serialised by that stock row's lock, and the generic path of
:class:`~storage.sql.SqlStore` holds the lock across ten round trips and the commit's fsync: about
220 reservations per second for one SKU, however many clients ask. Here concurrent requests are
queued and each transaction takes the whole queue (group commit): the lock is held once per batch,
the fsync is paid once per batch, and the work of each request runs inside the server as one call of
``synchub_reserve_batch`` — a PL/pgSQL function installed by migration 2.

The function keeps every rule of :mod:`storage.base`, as ``SqlStore.reserve`` does (a test compares
both paths on the same database): one outcome per idempotency key, the guarded ``UPDATE`` that makes
overselling impossible, all or nothing per reservation (a
failed line rolls back that reservation's earlier lines through a subtransaction, and only
reservations of more than one line pay for one), and one outbox delta per stock change. Each request
in a batch succeeds or fails on its own; only a database error fails the whole batch, and then every
request in it gets that error, nothing having been committed.

Changing a function below means a new migration with ``CREATE OR REPLACE`` — never editing this one.
Migration 9 replaced ``synchub_reserve_batch`` so that it checks the reservation caps
(:mod:`storage.reservation_caps`) of the requests that carry them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from storage.db import Tx
from storage.errors import IdempotencyMismatch
from storage.models import IdempotentResult, ReservationLineRequest, ReservationOutcome
from storage.reservation_caps import CAP_LOCK_CLASS, PG_PAST_USER_CAP, ReservationCaps, reservation_refusal

# One line: {"product_id", "quantity", "index", "warehouse_id"?, "region"?}. Returns
# {"warehouse_id": w} once reserved (and its outbox delta written, built as
# storage.models.InventoryDelta.to_dict and stock_status build it), or the refusal
# {"status", "body"} having changed nothing.
_TAKE_LINE = """
CREATE FUNCTION synchub_take_line(line JSONB, ts BIGINT) RETURNS JSONB
LANGUAGE plpgsql AS $fn$
DECLARE
    pid TEXT := line->>'product_id';
    qty BIGINT := (line->>'quantity')::BIGINT;
    idx INTEGER := (line->>'index')::INTEGER;
    product RECORD;
    candidate RECORD;
    changed RECORD;
BEGIN
    SELECT status, sku, low_stock_threshold INTO product FROM products WHERE id = pid;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('status', 404, 'body', jsonb_build_object(
            'code', 'product_not_found', 'detail', 'no such product',
            'resource', 'product', 'line', idx, 'product_id', pid));
    END IF;
    IF product.status = 'discontinued' THEN
        RETURN jsonb_build_object('status', 409, 'body', jsonb_build_object(
            'code', 'insufficient_stock', 'detail', 'the product is discontinued',
            'line', idx, 'product_id', pid));
    END IF;
    FOR candidate IN
        SELECT s.warehouse_id, w.region FROM stock s JOIN warehouses w ON w.id = s.warehouse_id
        WHERE s.product_id = pid AND s.on_hand - s.reserved >= qty
          AND (line->>'warehouse_id' IS NULL OR s.warehouse_id = line->>'warehouse_id')
          AND (line->>'region' IS NULL OR w.region = line->>'region')
        ORDER BY s.on_hand - s.reserved DESC, s.warehouse_id
        LIMIT 16
    LOOP
        -- The guard is evaluated against the latest row: the statement that makes overselling impossible.
        UPDATE stock SET reserved = reserved + qty, version = version + 1, updated_at = ts
        WHERE product_id = pid AND warehouse_id = candidate.warehouse_id AND on_hand - reserved >= qty
        RETURNING on_hand, reserved, version INTO changed;
        IF FOUND THEN
            INSERT INTO outbox (product_id, warehouse_id, payload, created_at)
            VALUES (pid, candidate.warehouse_id, jsonb_build_object(
                'product_id', pid, 'sku', product.sku, 'warehouse_id', candidate.warehouse_id,
                'region', candidate.region, 'on_hand', changed.on_hand, 'reserved', changed.reserved,
                'available', changed.on_hand - changed.reserved,
                'status', CASE
                    WHEN product.status = 'preorder' THEN 'preorder'
                    WHEN changed.on_hand - changed.reserved <= 0 THEN 'out_of_stock'
                    WHEN changed.on_hand - changed.reserved <= product.low_stock_threshold THEN 'low_stock'
                    ELSE 'in_stock' END,
                'version', changed.version, 'ts', ts)::TEXT, ts);
            RETURN jsonb_build_object('warehouse_id', candidate.warehouse_id);
        END IF;
    END LOOP;
    RETURN jsonb_build_object('status', 409, 'body', jsonb_build_object(
        'code', 'insufficient_stock', 'detail', 'not enough stock available for this line',
        'line', idx, 'product_id', pid, 'requested', qty));
END
$fn$
"""

# One claimed request: {"id", "owner", "ttl_us", "lines": [...] in product order}.
# Returns {"status", "body"}.
_RESERVE_ONE = """
CREATE FUNCTION synchub_reserve_one(request JSONB, ts BIGINT) RETURNS JSONB
LANGUAGE plpgsql AS $fn$
DECLARE
    line JSONB;
    outcome JSONB;
    failure JSONB;
    taken JSONB := '[]'::JSONB;
    expires_at BIGINT := ts + (request->>'ttl_us')::BIGINT;
BEGIN
    IF jsonb_array_length(request->'lines') = 1 THEN
        line := request->'lines'->0;
        outcome := synchub_take_line(line, ts);
        IF outcome ? 'status' THEN
            RETURN outcome;
        END IF;
        taken := jsonb_build_array(line || outcome);
    ELSE
        -- All or nothing: a refused line undoes the lines taken before it (a subtransaction;
        -- plpgsql variables such as failure survive its rollback).
        BEGIN
            FOR line IN SELECT value FROM jsonb_array_elements(request->'lines') LOOP
                outcome := synchub_take_line(line, ts);
                IF outcome ? 'status' THEN
                    failure := outcome;
                    RAISE EXCEPTION 'line refused' USING ERRCODE = 'SH001';
                END IF;
                taken := taken || jsonb_build_array(line || outcome);
            END LOOP;
        EXCEPTION WHEN SQLSTATE 'SH001' THEN
            RETURN failure;
        END;
    END IF;
    INSERT INTO reservations (id, owner, status, created_at, expires_at, updated_at)
    VALUES (request->>'id', request->>'owner', 'pending', ts, expires_at, ts);
    INSERT INTO reservation_lines (reservation_id, line_no, product_id, warehouse_id, quantity)
    SELECT request->>'id', (t->>'index')::INTEGER, t->>'product_id', t->>'warehouse_id',
           (t->>'quantity')::BIGINT
    FROM jsonb_array_elements(taken) AS t
    ORDER BY (t->>'index')::INTEGER;
    RETURN jsonb_build_object('status', 201, 'body', jsonb_build_object(
        'id', request->>'id', 'owner', request->>'owner', 'status', 'pending',
        'lines', (SELECT jsonb_agg(jsonb_build_object(
                      'product_id', t->>'product_id', 'warehouse_id', t->>'warehouse_id',
                      'quantity', (t->>'quantity')::BIGINT) ORDER BY (t->>'index')::INTEGER)
                  FROM jsonb_array_elements(taken) AS t),
        'created_at', ts, 'expires_at', expires_at, 'updated_at', ts));
END
$fn$
"""

# The batch: [{"owner", "key", "hash", "id", "ttl_us", "lines"}]. Returns one outcome per request, in
# order: {"status", "body", "replayed"} or {"mismatch": true} for a key reused with another body.
_RESERVE_BATCH = """
CREATE FUNCTION synchub_reserve_batch(requests JSONB, ts BIGINT) RETURNS JSONB
LANGUAGE plpgsql AS $fn$
DECLARE
    request JSONB;
    prior RECORD;
    outcome JSONB;
    results JSONB[] := '{}';  -- appended in place; concatenating JSONB would copy it every time
BEGIN
    -- Every stock row the batch may touch, locked up front in one global order: concurrent batches
    -- then queue behind each other instead of deadlocking.
    PERFORM 1 FROM stock
    WHERE product_id IN (
        SELECT l.line->>'product_id'
        FROM jsonb_array_elements(requests) AS r(request),
             jsonb_array_elements(r.request->'lines') AS l(line))
    ORDER BY product_id, warehouse_id
    FOR UPDATE;
    FOR request IN SELECT value FROM jsonb_array_elements(requests) LOOP
        SELECT k.request_hash, k.status, k.body INTO prior FROM idempotency_keys k
        WHERE k.owner = request->>'owner' AND k.key = request->>'key';
        IF FOUND THEN
            -- Used before, in an earlier transaction or earlier in this batch.
            IF prior.request_hash <> request->>'hash' THEN
                outcome := jsonb_build_object('mismatch', true);
            ELSE
                outcome := jsonb_build_object(
                    'status', prior.status, 'body', prior.body::JSONB, 'replayed', true);
            END IF;
        ELSE
            outcome := synchub_reserve_one(request, ts);
            INSERT INTO idempotency_keys (owner, key, request_hash, status, body, created_at)
            VALUES (request->>'owner', request->>'key', request->>'hash',
                    (outcome->>'status')::INTEGER, (outcome->'body')::TEXT, ts)
            ON CONFLICT (owner, key) DO NOTHING;
            IF NOT FOUND THEN
                -- A concurrent transaction committed this key after our look: this request's work
                -- must not count. The batch is retried as a serialization failure; the look then
                -- finds the key and replays its outcome.
                RAISE EXCEPTION 'idempotency key % claimed concurrently', request->>'key'
                    USING ERRCODE = 'serialization_failure';
            END IF;
            outcome := outcome || jsonb_build_object('replayed', false);
        END IF;
        results := results || outcome;
    END LOOP;
    RETURN to_jsonb(results);
END
$fn$
"""

MIGRATION = [_TAKE_LINE, _RESERVE_ONE, _RESERVE_BATCH]

# Migration 3: the batch tells each owner of a reservation it created, as SqlStore.user_event does — a
# ``reservation.created`` event on the owner's user stream (each request names it: "user_stream"),
# numbered by the owner's event counter. Owners are taken in name order after all the stock work, as
# every transaction takes a user's counter last: no lock cycle between concurrent batches.
_RESERVE_BATCH_TOLD = """
CREATE FUNCTION synchub_reserve_batch_told(requests JSONB, ts BIGINT) RETURNS JSONB
LANGUAGE plpgsql AS $fn$
DECLARE
    results JSONB := synchub_reserve_batch(requests, ts);
    created RECORD;
    next_version BIGINT;
BEGIN
    FOR created IN
        SELECT r.request, o.outcome
        FROM jsonb_array_elements(requests) WITH ORDINALITY AS r(request, n)
        JOIN jsonb_array_elements(results) WITH ORDINALITY AS o(outcome, n) USING (n)
        WHERE (o.outcome->>'status')::INTEGER = 201 AND NOT (o.outcome->>'replayed')::BOOLEAN
        ORDER BY r.request->>'owner', r.n
    LOOP
        INSERT INTO user_events (sub, version) VALUES (created.request->>'owner', 1)
        ON CONFLICT (sub) DO UPDATE SET version = user_events.version + 1
        RETURNING version INTO next_version;
        INSERT INTO outbox (product_id, warehouse_id, payload, created_at, stream, dedupe_key, version)
        VALUES ('', '', jsonb_build_object(
                    'type', 'reservation.created', 'reservation', created.outcome->'body',
                    'sub', created.request->>'owner', 'version', next_version, 'ts', ts)::TEXT,
                ts, created.request->>'user_stream', 'user:' || (created.request->>'owner'), next_version);
    END LOOP;
    RETURN results;
END
$fn$
"""

MIGRATION_3 = [_RESERVE_BATCH_TOLD]

# Migration 9: migration 2's batch, and the reservation caps of the requests that carry them
# (storage.reservation_caps): "refusal", the hub's answer to a request past the per-reservation cap,
# stored as its outcome; "caps": {"user": n}, the units of a product its owner may hold. First the lock of
# each owner whose held units are capped, in one order and before any stock row (as the generic path
# takes it); then, still before the stock rows, what those owners hold of the batch's products, read
# once into ``held``: owner by owner along the owners' index (a LATERAL fenced by OFFSET 0, so that no
# planner walks a hot product's lines instead: storage.reservation_caps.check_caps). Under the stock
# rows' locks each capped request is checked against ``held`` (synchub_past_user_cap), and a
# reservation made for an owner with more requests in the batch adds its units to it.
_RESERVE_BATCH_CAPPED = f"""
CREATE OR REPLACE FUNCTION synchub_reserve_batch(requests JSONB, ts BIGINT) RETURNS JSONB
LANGUAGE plpgsql AS $fn$
DECLARE
    request JSONB;
    prior RECORD;
    outcome JSONB;
    results JSONB[] := '{{}}';  -- appended in place; concatenating JSONB would copy it every time
    capped_owners TEXT[];
    repeated_owners TEXT[];  -- capped owners with more than one request in the batch
    held JSONB := '{{}}';  -- owner || chr(31) || product_id → units held (owners of capped requests)
    cap BIGINT;
    line JSONB;
    held_key TEXT;
BEGIN
    SELECT array_agg(DISTINCT r.request->>'owner') INTO capped_owners
    FROM jsonb_array_elements(requests) AS r(request)
    WHERE COALESCE((r.request->'caps'->>'user')::BIGINT, 0) > 0;
    IF capped_owners IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock({CAP_LOCK_CLASS}, owners.k) FROM (
            SELECT DISTINCT hashtext(o) AS k FROM unnest(capped_owners) AS o ORDER BY k) AS owners;
        SELECT COALESCE(jsonb_object_agg(h.k, h.units), '{{}}') INTO held FROM (
            SELECT o.owner || chr(31) || x.product_id AS k, SUM(x.quantity) AS units
            FROM unnest(capped_owners) AS o(owner),
                 LATERAL (SELECT rl.product_id, rl.quantity FROM reservations r
                          JOIN reservation_lines rl ON rl.reservation_id = r.id
                          WHERE r.owner = o.owner AND r.status = 'pending' AND r.expires_at > ts
                          OFFSET 0) AS x
            WHERE x.product_id IN (
                SELECT l.line->>'product_id'
                FROM jsonb_array_elements(requests) AS r(request),
                     jsonb_array_elements(r.request->'lines') AS l(line))
            GROUP BY 1) AS h;
        SELECT array_agg(o.owner) INTO repeated_owners FROM (
            SELECT r.request->>'owner' AS owner FROM jsonb_array_elements(requests) AS r(request)
            WHERE r.request->>'owner' = ANY (capped_owners)
            GROUP BY 1 HAVING COUNT(*) > 1) AS o;
    END IF;
    -- Every stock row the batch may touch, locked up front in one global order: concurrent batches
    -- then queue behind each other instead of deadlocking.
    PERFORM 1 FROM stock
    WHERE product_id IN (
        SELECT l.line->>'product_id'
        FROM jsonb_array_elements(requests) AS r(request),
             jsonb_array_elements(r.request->'lines') AS l(line))
    ORDER BY product_id, warehouse_id
    FOR UPDATE;
    FOR request IN SELECT value FROM jsonb_array_elements(requests) LOOP
        SELECT k.request_hash, k.status, k.body INTO prior FROM idempotency_keys k
        WHERE k.owner = request->>'owner' AND k.key = request->>'key';
        IF FOUND THEN
            -- Used before, in an earlier transaction or earlier in this batch.
            IF prior.request_hash <> request->>'hash' THEN
                outcome := jsonb_build_object('mismatch', true);
            ELSE
                outcome := jsonb_build_object(
                    'status', prior.status, 'body', prior.body::JSONB, 'replayed', true);
            END IF;
        ELSE
            outcome := request->'refusal';
            cap := COALESCE((request->'caps'->>'user')::BIGINT, 0);
            IF outcome IS NULL AND cap > 0 THEN
                outcome := synchub_past_user_cap(request, held, cap);
            END IF;
            IF outcome IS NULL THEN
                outcome := synchub_reserve_one(request, ts);
                -- Any reservation of a capped owner counts, an exempt token's of the same subject too.
                IF repeated_owners IS NOT NULL AND (outcome->>'status')::INTEGER = 201
                   AND request->>'owner' = ANY (repeated_owners) THEN
                    FOR line IN SELECT value FROM jsonb_array_elements(request->'lines') LOOP
                        held_key := (request->>'owner') || chr(31) || (line->>'product_id');
                        held := held || jsonb_build_object(held_key,
                            COALESCE((held->>held_key)::BIGINT, 0) + (line->>'quantity')::BIGINT);
                    END LOOP;
                END IF;
            END IF;
            INSERT INTO idempotency_keys (owner, key, request_hash, status, body, created_at)
            VALUES (request->>'owner', request->>'key', request->>'hash',
                    (outcome->>'status')::INTEGER, (outcome->'body')::TEXT, ts)
            ON CONFLICT (owner, key) DO NOTHING;
            IF NOT FOUND THEN
                -- A concurrent transaction committed this key after our look: this request's work
                -- must not count. The batch is retried as a serialization failure; the look then
                -- finds the key and replays its outcome.
                RAISE EXCEPTION 'idempotency key % claimed concurrently', request->>'key'
                    USING ERRCODE = 'serialization_failure';
            END IF;
            outcome := outcome || jsonb_build_object('replayed', false);
        END IF;
        results := results || outcome;
    END LOOP;
    RETURN to_jsonb(results);
END
$fn$
"""

MIGRATION_9 = [PG_PAST_USER_CAP, _RESERVE_BATCH_CAPPED]


@dataclass(slots=True)
class _Request:
    owner: str
    key: str
    request_hash: str
    reservation_id: str
    lines: Sequence[ReservationLineRequest]
    ttl_seconds: int
    user_stream: str
    caps: ReservationCaps | None = None
    done: asyncio.Future[IdempotentResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def encode(self) -> dict[str, Any]:
        lines = []
        # Lines in product order, as SqlStore takes them: the same line is refused first on both paths.
        for index, line in sorted(enumerate(self.lines), key=lambda il: il[1].product_id):
            item: dict[str, Any] = {"product_id": line.product_id, "quantity": line.quantity, "index": index}
            if line.warehouse_id is not None:
                item["warehouse_id"] = line.warehouse_id
            if line.region is not None:
                item["region"] = line.region
            lines.append(item)
        encoded = {
            "owner": self.owner,
            "key": self.key,
            "hash": self.request_hash,
            "id": self.reservation_id,
            "ttl_us": self.ttl_seconds * 1_000_000,
            "lines": lines,
            "user_stream": self.user_stream,
        }
        if self.caps is not None and self.caps.active:
            encoded["caps"] = self.caps.encode()
            refusal = reservation_refusal(self.lines, self.caps)
            if refusal is not None:
                encoded["refusal"] = {"status": ReservationOutcome.CAP_EXCEEDED.value, "body": refusal}
        return encoded


def _seen(done: asyncio.Future[IdempotentResult]) -> None:
    if not done.cancelled():
        done.exception()


RunInTransaction = Callable[[Callable[[Tx], Awaitable[Any]]], Awaitable[Any]]


class ReservationBatcher:
    """Group commit: requests that arrive while batches are in flight go together in the next one.

    At most ``max_in_flight`` transactions run at once (each holds a pooled connection) and each
    carries at most ``max_batch`` requests. A request waits at most one loop turn before its batch
    starts, so that requests read from many sockets in the same turn go together; under load the
    queue fills while the previous batches commit.
    """

    def __init__(
        self,
        run: RunInTransaction,
        now_us: Callable[[], int],
        user_stream: Callable[[str], str],
        *,
        max_batch: int = 64,
        max_in_flight: int = 3,
    ) -> None:
        """``user_stream``: the stream of an owner's private events (storage.streams.user_stream)."""
        self._run = run
        self._user_stream = user_stream
        self._now_us = now_us
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: list[_Request] = []
        self._in_flight = 0
        self._start_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.transactions = 0  # batches sent to the database (a batch retried after a deadlock counts once)

    async def reserve(
        self,
        owner: str,
        idempotency_key: str,
        request_hash: str,
        lines: Sequence[ReservationLineRequest],
        ttl_seconds: int,
        reservation_id: str,
        caps: ReservationCaps | None = None,
    ) -> IdempotentResult:
        request = _Request(
            owner,
            idempotency_key,
            request_hash,
            reservation_id,
            lines,
            ttl_seconds,
            self._user_stream(owner),
            caps,
        )
        # Marks an error as seen even when the caller stopped waiting (no "never retrieved" warning).
        request.done.add_done_callback(_seen)
        self._queue.append(request)
        if not self._start_scheduled:
            self._start_scheduled = True
            asyncio.get_running_loop().call_soon(self._start)
        # The batch runs in its own task: a caller that gives up (a closed HTTP request) cancels only
        # its wait, never the transaction the other requests of its batch are in.
        return await asyncio.shield(request.done)

    def _start(self) -> None:
        self._start_scheduled = False
        while self._queue and self._in_flight < self._max_in_flight:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            self._in_flight += 1
            self.transactions += 1
            task = asyncio.get_running_loop().create_task(self._commit(batch), name="reservation-batch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _commit(self, batch: list[_Request]) -> None:
        try:
            payload = orjson.dumps([r.encode() for r in batch]).decode()

            async def work(tx: Tx) -> Any:
                row = await tx.fetchrow(
                    "SELECT synchub_reserve_batch_told($1::JSONB, $2) AS results", payload, self._now_us()
                )
                assert row is not None
                return row["results"]

            outcomes = orjson.loads(await self._run(work))
        except asyncio.CancelledError:
            for request in batch:
                request.done.cancel()
            raise
        except Exception as exc:
            for request in batch:
                request.done.set_exception(exc)
        else:
            for request, outcome in zip(batch, outcomes, strict=True):
                if outcome.get("mismatch"):
                    request.done.set_exception(
                        IdempotencyMismatch("this Idempotency-Key was used with a different request body")
                    )
                else:
                    request.done.set_result(
                        IdempotentResult(
                            ReservationOutcome(outcome["status"]),
                            outcome["body"],
                            replayed=outcome["replayed"],
                        )
                    )
        finally:
            self._in_flight -= 1
            self._start()

    async def close(self) -> None:
        """Wait for the batches in flight (their requests are already in the database's hands)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
