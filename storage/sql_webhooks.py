"""Webhooks in SQL (storage/webhooks.py states the records and the guarantees).

Every transaction that changes an endpoint's queue begins by locking the endpoint's row (PostgreSQL:
``FOR UPDATE``; SQLite has one writer): taking events in, recording attempts, replaying and deleting
then never interleave for one endpoint, which keeps the ``head`` flags true — exactly one head, the
oldest pending message, per key that has pending messages. A message is inserted one statement at a
time so that each sees the one before it (whether its key already has a pending message).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from storage.db import Database, Row, Tx
from storage.errors import NotFound, VersionMismatch
from storage.sql_api_keys import _SELECT as _API_KEY_SELECT
from storage.sql_api_keys import _key as _api_key
from storage.sql_pages import newest_first
from storage.webhooks import (
    Attempt,
    AttemptResult,
    Delivery,
    DeliveryStatus,
    DisablePolicy,
    Outcome,
    QueuedMessage,
    Recorded,
    Replay,
    StreamPosition,
    Subscription,
    WebhookEndpoint,
)

T = TypeVar("T")

_ENDPOINT_COLUMNS = (
    "id, owner, owner_is_admin, url, description, subscriptions, secret_ciphertext, enabled,"
    " disabled_reason, disabled_at, failing_since, dead_letters, version, created_at, updated_at,"
    " previous_secret_ciphertext, previous_secret_until"
)
_DELIVERY_COLUMNS = (
    "seq, endpoint_id, message_id, region, order_key, event_type, event_at, payload, stream, epoch,"
    " position_offset, status, attempts, next_attempt_at, queued_at, updated_at, last_error"
)
_ATTEMPT_COLUMNS = (
    "seq, endpoint_id, delivery_seq, message_id, event_type, attempt, at, status_code, latency_us,"
    " error, outcome"
)
_API_KEY_PREFIX = "apikey."


class _Core(Protocol):
    db: Database

    async def _write(self, work: Callable[[Tx], Awaitable[T]], *, single_statement: bool = False) -> T: ...
    async def user_event(
        self, tx: Tx, sub: str, payload: dict[str, Any], ts: int, *, region: str | None = None
    ) -> None: ...


def _subscriptions_json(subscriptions: Sequence[Subscription]) -> str:
    return json.dumps(
        [
            {"type": s.type, **({"filters": {k: list(v) for k, v in s.filters.items()}} if s.filters else {})}
            for s in subscriptions
        ],
        separators=(",", ":"),
    )


def _endpoint(row: Row) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row["id"],
        owner=row["owner"],
        owner_is_admin=bool(row["owner_is_admin"]),
        url=row["url"],
        description=row["description"],
        subscriptions=tuple(
            Subscription(item["type"], {k: tuple(v) for k, v in item.get("filters", {}).items()})
            for item in json.loads(row["subscriptions"])
        ),
        secret_ciphertext=row["secret_ciphertext"],
        enabled=bool(row["enabled"]),
        disabled_reason=row["disabled_reason"],
        disabled_at=row["disabled_at"],
        failing_since=row["failing_since"],
        dead_letters=int(row["dead_letters"]),
        version=int(row["version"]),
        created_at=int(row["created_at"]),
        updated_at=int(row["updated_at"]),
        previous_secret_ciphertext=row["previous_secret_ciphertext"],
        previous_secret_until=row["previous_secret_until"],
    )


def _delivery(row: Row) -> Delivery:
    return Delivery(
        seq=int(row["seq"]),
        endpoint_id=row["endpoint_id"],
        message_id=row["message_id"],
        region=row["region"],
        order_key=row["order_key"],
        event_type=row["event_type"],
        event_at=int(row["event_at"]),
        payload=row["payload"].encode(),
        stream=row["stream"],
        epoch=row["epoch"],
        offset=int(row["position_offset"]),
        status=DeliveryStatus(row["status"]),
        attempts=int(row["attempts"]),
        next_attempt_at=int(row["next_attempt_at"]),
        queued_at=int(row["queued_at"]),
        updated_at=int(row["updated_at"]),
        last_error=row["last_error"],
    )


def _attempt(row: Row) -> Attempt:
    return Attempt(
        seq=int(row["seq"]),
        endpoint_id=row["endpoint_id"],
        delivery_seq=int(row["delivery_seq"]),
        message_id=row["message_id"],
        event_type=row["event_type"],
        attempt=int(row["attempt"]),
        at=int(row["at"]),
        status_code=row["status_code"],
        latency_us=int(row["latency_us"]),
        error=row["error"],
        outcome=Outcome(row["outcome"]),
    )


async def _lock(db: Database, tx: Tx, endpoint_id: str) -> Row | None:
    """The endpoint's row, locked until the transaction ends (None: no such endpoint)."""
    suffix = " FOR UPDATE" if db.dialect == "postgres" else ""
    return await tx.fetchrow(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1{suffix}", endpoint_id
    )


async def _set_positions(
    tx: Tx, endpoint_id: str, positions: Mapping[str, StreamPosition], *, only_new: bool = False
) -> None:
    conflict = (
        "DO NOTHING"
        if only_new
        else "DO UPDATE SET epoch = excluded.epoch, position_offset = excluded.position_offset"
    )
    for stream, position in positions.items():
        await tx.execute(
            "INSERT INTO webhook_positions (endpoint_id, stream, epoch, position_offset)"
            " VALUES ($1, $2, $3, $4)"
            f" ON CONFLICT (endpoint_id, stream) {conflict}",
            endpoint_id,
            stream,
            position.epoch,
            position.offset,
        )


_ROWS = 200  # rows per multi-row statement (well under both databases' limits on parameters)


def _chunks(items: Sequence[T], size: int = _ROWS) -> list[Sequence[T]]:
    return [items[n : n + size] for n in range(0, len(items), size)]


def _rows(count: int, width: int, first: int) -> str:
    """``($first, …), (…)``: ``count`` rows of ``width`` numbered parameters."""
    return ", ".join(
        "(" + ", ".join(f"${first + row * width + col}" for col in range(width)) + ")" for row in range(count)
    )


async def _promote(tx: Tx, endpoint_id: str, region: str, keys: Sequence[str]) -> None:
    """Each key's oldest pending message becomes its head. Always right: the head *is* the oldest pending
    message, so for a key that has one already this changes nothing; one per key, through the index."""
    for chunk in _chunks(sorted(set(keys))):
        values = ", ".join(f"(${n})" for n in range(3, 3 + len(chunk)))
        await tx.execute(
            "UPDATE webhook_deliveries SET head = 1 WHERE seq IN (SELECT (SELECT MIN(p.seq) FROM"
            " webhook_deliveries p WHERE p.endpoint_id = $1 AND p.region = $2 AND p.order_key = k.column1"
            f" AND p.status = 'pending') FROM (VALUES {values}) AS k) AND head = 0",
            endpoint_id,
            region,
            *chunk,
        )


def _messages(count: int) -> str:
    """The VALUES rows of an enqueue: $1 the endpoint, $2 the time, nine parameters a message."""
    return ", ".join(
        "($1, $2, " + ", ".join(f"${3 + row * 9 + col}" for col in range(9)) + ", 'pending', 0, 0, $2, $2)"
        for row in range(count)
    )


async def _reheads(tx: Tx, endpoint_id: str) -> None:
    """Every key's head is its oldest pending message again (after a replay made older ones pending)."""
    older = (
        "SELECT 1 FROM webhook_deliveries e WHERE e.endpoint_id = webhook_deliveries.endpoint_id"
        " AND e.region = webhook_deliveries.region AND e.order_key = webhook_deliveries.order_key"
        " AND e.status = 'pending' AND e.seq < webhook_deliveries.seq"
    )
    await tx.execute(
        "UPDATE webhook_deliveries SET head = 0 WHERE endpoint_id = $1 AND status = 'pending' AND head = 1"
        f" AND EXISTS ({older})",
        endpoint_id,
    )
    await tx.execute(
        "UPDATE webhook_deliveries SET head = 1 WHERE endpoint_id = $1 AND status = 'pending' AND head = 0"
        f" AND NOT EXISTS ({older})",
        endpoint_id,
    )


class WebhookSql:
    # -- endpoints ------------------------------------------------------------------------------
    async def create_webhook(
        self: _Core, endpoint: WebhookEndpoint, positions: Mapping[str, StreamPosition]
    ) -> WebhookEndpoint:
        async def work(tx: Tx) -> None:
            await tx.execute(
                f"INSERT INTO webhook_endpoints ({_ENDPOINT_COLUMNS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
                endpoint.id,
                endpoint.owner,
                int(endpoint.owner_is_admin),
                endpoint.url,
                endpoint.description,
                _subscriptions_json(endpoint.subscriptions),
                endpoint.secret_ciphertext,
                int(endpoint.enabled),
                endpoint.disabled_reason,
                endpoint.disabled_at,
                endpoint.failing_since,
                endpoint.dead_letters,
                endpoint.version,
                endpoint.created_at,
                endpoint.updated_at,
                endpoint.previous_secret_ciphertext,
                endpoint.previous_secret_until,
            )
            await _set_positions(tx, endpoint.id, positions)

        await self._write(work)
        return endpoint

    async def get_webhook(self: _Core, endpoint_id: str) -> WebhookEndpoint | None:
        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1", endpoint_id
            )

        row = await self.db.run(work, readonly=True, single_statement=True)
        return None if row is None else _endpoint(row)

    async def list_webhooks(
        self: _Core, owner: str | None, limit: int, after: tuple[int, str] | None = None
    ) -> list[WebhookEndpoint]:
        sql, args = newest_first(f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints", owner, limit, after)

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(sql, *args)

        return [_endpoint(r) for r in await self.db.run(work, readonly=True, single_statement=True)]

    async def update_webhook(
        self: _Core, endpoint: WebhookEndpoint, positions: Mapping[str, StreamPosition]
    ) -> WebhookEndpoint:
        db = self.db

        async def work(tx: Tx) -> None:
            current = await _lock(db, tx, endpoint.id)
            if current is None:
                raise NotFound("no such webhook", resource="webhook")
            if int(current["version"]) != endpoint.version - 1:
                raise VersionMismatch(
                    "the webhook changed meanwhile", current_version=int(current["version"])
                )
            await tx.execute(
                "UPDATE webhook_endpoints SET url = $2, description = $3, subscriptions = $4,"
                " enabled = $5, disabled_reason = $6, disabled_at = $7, failing_since = $8,"
                " dead_letters = $9, version = $10, updated_at = $11, secret_ciphertext = $12,"
                " previous_secret_ciphertext = $13, previous_secret_until = $14 WHERE id = $1",
                endpoint.id,
                endpoint.url,
                endpoint.description,
                _subscriptions_json(endpoint.subscriptions),
                int(endpoint.enabled),
                endpoint.disabled_reason,
                endpoint.disabled_at,
                endpoint.failing_since,
                endpoint.dead_letters,
                endpoint.version,
                endpoint.updated_at,
                endpoint.secret_ciphertext,
                endpoint.previous_secret_ciphertext,
                endpoint.previous_secret_until,
            )
            await _set_positions(tx, endpoint.id, positions, only_new=True)

        await self._write(work)
        return endpoint

    async def delete_webhook(self: _Core, endpoint_id: str) -> bool:
        db = self.db

        async def work(tx: Tx) -> bool:
            if await _lock(db, tx, endpoint_id) is None:
                return False
            for table in ("webhook_attempts", "webhook_deliveries", "webhook_positions", "webhook_leases"):
                await tx.execute(f"DELETE FROM {table} WHERE endpoint_id = $1", endpoint_id)
            await tx.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id)
            return True

        return await self._write(work)

    async def enabled_webhooks(self: _Core) -> list[WebhookEndpoint]:
        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(
                f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE enabled = 1 ORDER BY id"
            )

        return [_endpoint(r) for r in await self.db.run(work, readonly=True, single_statement=True)]

    async def disable_webhook(self: _Core, endpoint_id: str, reason: str, now_us: int) -> bool:
        core = self

        async def work(tx: Tx) -> bool:
            row = await _lock(core.db, tx, endpoint_id)
            if row is None or not row["enabled"]:
                return False
            await _disable(core, tx, _endpoint(row), reason, now_us)
            return True

        return await self._write(work)

    # -- leases -----------------------------------------------------------------------------------
    async def claim_webhook_leases(
        self: _Core, holder: str, region: str, endpoint_ids: Sequence[str], now_us: int, expires_at: int
    ) -> set[str]:
        if not endpoint_ids:
            return set()

        async def work(tx: Tx) -> set[str]:
            held = set()
            for endpoint_id in endpoint_ids:
                # One conditional statement: the database evaluates "free, expired or mine" against the
                # newest row (PostgreSQL locks the conflicting row and re-checks), so of two nodes racing
                # for a lease one gets it.
                taken = await tx.execute(
                    "INSERT INTO webhook_leases (endpoint_id, region, holder, expires_at)"
                    " SELECT id, $2, $3, CAST($4 AS BIGINT) FROM webhook_endpoints"
                    " WHERE id = $1 AND enabled = 1"
                    " ON CONFLICT (endpoint_id, region) DO UPDATE SET holder = excluded.holder,"
                    " expires_at = excluded.expires_at"
                    " WHERE webhook_leases.holder = excluded.holder OR webhook_leases.expires_at < $5",
                    endpoint_id,
                    region,
                    holder,
                    expires_at,
                    now_us,
                )
                if taken:
                    held.add(endpoint_id)
            return held

        return await self._write(work)

    async def release_webhook_leases(
        self: _Core, holder: str, region: str, endpoint_ids: Sequence[str]
    ) -> None:
        if not endpoint_ids:
            return

        async def work(tx: Tx) -> None:
            for endpoint_id in endpoint_ids:
                await tx.execute(
                    "DELETE FROM webhook_leases WHERE endpoint_id = $1 AND region = $2 AND holder = $3",
                    endpoint_id,
                    region,
                    holder,
                )

        await self._write(work)

    async def webhook_leases(self: _Core, region: str, now_us: int) -> dict[str, str]:
        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(
                "SELECT endpoint_id, holder FROM webhook_leases WHERE region = $1 AND expires_at >= $2",
                region,
                now_us,
            )

        return {
            r["endpoint_id"]: r["holder"]
            for r in await self.db.run(work, readonly=True, single_statement=True)
        }

    # -- positions and the queue ------------------------------------------------------------------
    async def webhook_positions(self: _Core, endpoint_id: str) -> dict[str, StreamPosition]:
        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(
                "SELECT stream, epoch, position_offset FROM webhook_positions WHERE endpoint_id = $1",
                endpoint_id,
            )

        rows = await self.db.run(work, readonly=True, single_statement=True)
        return {r["stream"]: StreamPosition(r["epoch"], int(r["position_offset"])) for r in rows}

    async def enqueue_webhook_messages(
        self: _Core,
        endpoint_id: str,
        messages: Sequence[QueuedMessage],
        positions: Mapping[str, StreamPosition],
        now_us: int,
    ) -> int:
        db = self.db

        async def work(tx: Tx) -> int:
            if await _lock(db, tx, endpoint_id) is None:
                return 0  # deleted meanwhile: nothing to take in
            queued = 0
            for chunk in _chunks(messages):
                # (a message id queued before is skipped: taking the same events in twice queues them once)
                queued += await tx.execute(
                    "INSERT INTO webhook_deliveries (endpoint_id, next_attempt_at, message_id, region,"
                    " order_key, event_type, event_at, payload, stream, epoch, position_offset, status, head,"
                    " attempts,"
                    " queued_at, updated_at)"
                    f" VALUES {_messages(len(chunk))} ON CONFLICT (endpoint_id, message_id) DO NOTHING",
                    endpoint_id,
                    now_us,
                    *(
                        value
                        for m in chunk
                        for value in (
                            m.message_id,
                            m.region,
                            m.order_key,
                            m.event_type,
                            m.event_at,
                            m.payload.decode(),
                            m.stream,
                            m.epoch,
                            m.offset,
                        )
                    ),
                )
            for region in {m.region for m in messages}:
                await _promote(tx, endpoint_id, region, [m.order_key for m in messages if m.region == region])
            await _set_positions(tx, endpoint_id, positions)
            return queued

        return await self._write(work)

    async def due_webhook_deliveries(
        self: _Core, endpoint_id: str, region: str, now_us: int, limit: int, exclude: Sequence[int] = ()
    ) -> list[Delivery]:
        skip = (
            f" AND seq NOT IN ({', '.join(f'${n}' for n in range(5, 5 + len(exclude)))})" if exclude else ""
        )
        sql = (
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1 AND region = $2"
            f" AND status = 'pending' AND head = 1 AND next_attempt_at <= $3{skip} ORDER BY seq LIMIT $4"
        )

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(sql, endpoint_id, region, now_us, limit, *exclude)

        return [_delivery(r) for r in await self.db.run(work, readonly=True, single_statement=True)]

    async def next_webhook_attempt(self: _Core, endpoint_id: str, region: str) -> int | None:
        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT MIN(next_attempt_at) AS due FROM webhook_deliveries WHERE endpoint_id = $1"
                " AND region = $2 AND status = 'pending' AND head = 1",
                endpoint_id,
                region,
            )

        row = await self.db.run(work, readonly=True, single_statement=True)
        return None if row is None or row["due"] is None else int(row["due"])

    async def record_webhook_attempts(
        self: _Core, endpoint_id: str, results: Sequence[AttemptResult], policy: DisablePolicy, now_us: int
    ) -> Recorded:
        core = self
        ordered = sorted(results, key=lambda r: r.at)

        async def work(tx: Tx) -> Recorded:
            row = await _lock(core.db, tx, endpoint_id)
            if row is None:
                return Recorded(False, None)
            for chunk in _chunks(ordered):
                await tx.execute(
                    "INSERT INTO webhook_attempts (endpoint_id, delivery_seq, message_id, event_type,"
                    " attempt, at, status_code, latency_us, error, outcome)"
                    f" VALUES {_rows(len(chunk), 10, 1)}",
                    *(
                        value
                        for r in chunk
                        for value in (
                            endpoint_id,
                            r.delivery_seq,
                            r.message_id,
                            r.event_type,
                            r.attempt,
                            r.at,
                            r.status_code,
                            r.latency_us,
                            r.error,
                            r.outcome.value,
                        )
                    ),
                )
            ended: list[Row] = []  # (region, order_key) of the heads delivered or dead: their keys move on
            delivered = [r.delivery_seq for r in ordered if r.outcome is Outcome.DELIVERED]
            for seqs in _chunks(delivered):
                marks = ", ".join(f"${n}" for n in range(3, 3 + len(seqs)))
                ended += await tx.fetch(
                    "UPDATE webhook_deliveries SET status = 'delivered', head = 0, attempts = attempts + 1,"
                    f" updated_at = $2, last_error = NULL WHERE endpoint_id = $1 AND seq IN ({marks})"
                    " AND status = 'pending' RETURNING region, order_key",
                    endpoint_id,
                    now_us,
                    *seqs,
                )
            for result in ordered:
                if result.outcome is Outcome.RETRY:
                    await tx.execute(
                        "UPDATE webhook_deliveries SET attempts = $2, next_attempt_at = $3, updated_at = $4,"
                        " last_error = $5 WHERE seq = $1 AND status = 'pending'",
                        result.delivery_seq,
                        result.attempt,
                        result.next_attempt_at,
                        result.at,
                        result.error,
                    )
                elif result.outcome is Outcome.DEAD:
                    ended += await tx.fetch(
                        "UPDATE webhook_deliveries SET status = 'dead', head = 0, attempts = $2,"
                        " updated_at = $3, last_error = $4 WHERE seq = $1 AND status = 'pending'"
                        " RETURNING region, order_key",
                        result.delivery_seq,
                        result.attempt,
                        result.at,
                        result.error,
                    )
            for region in {r["region"] for r in ended}:
                await _promote(
                    tx, endpoint_id, region, [r["order_key"] for r in ended if r["region"] == region]
                )
            failing_since: int | None = row["failing_since"]
            dead_letters = int(row["dead_letters"])
            for result in ordered:
                if result.outcome is Outcome.DELIVERED:
                    failing_since, dead_letters = None, 0
                else:
                    failing_since = result.at if failing_since is None else failing_since
                    if result.outcome is Outcome.DEAD:
                        dead_letters += 1
            if (failing_since, dead_letters) != (row["failing_since"], int(row["dead_letters"])):
                await tx.execute(
                    "UPDATE webhook_endpoints SET failing_since = $2, dead_letters = $3 WHERE id = $1",
                    endpoint_id,
                    failing_since,
                    dead_letters,
                )
            endpoint = _endpoint({**dict(row), "failing_since": failing_since, "dead_letters": dead_letters})
            failing_too_long = (
                policy.failing_for_us > 0
                and failing_since is not None
                and now_us - failing_since >= policy.failing_for_us
            )
            too_many_dead = policy.dead_letters > 0 and dead_letters >= policy.dead_letters
            if endpoint.enabled and (failing_too_long or too_many_dead):
                return Recorded(True, await _disable(core, tx, endpoint, "failing", now_us))
            return Recorded(False, endpoint)

        return await self._write(work)

    async def replay_webhook(self: _Core, endpoint_id: str, replay: Replay, now_us: int) -> int:
        db = self.db
        reset = (
            "UPDATE webhook_deliveries SET status = 'pending', head = 0, attempts = 0, next_attempt_at = $2,"
            " queued_at = $2, updated_at = $2, last_error = NULL WHERE endpoint_id = $1"
        )

        async def work(tx: Tx) -> int:
            if await _lock(db, tx, endpoint_id) is None:
                raise NotFound("no such webhook", resource="webhook")
            if replay.message_id is not None:
                changed = await tx.execute(
                    f"{reset} AND message_id = $3 AND status = 'dead'", endpoint_id, now_us, replay.message_id
                )
                if not changed:
                    raise NotFound(
                        "no dead letter of this webhook has that message id", resource="dead_letter"
                    )
            elif replay.since_us is not None:
                changed = await tx.execute(
                    f"{reset} AND event_at >= $3 AND stream <> ''", endpoint_id, now_us, replay.since_us
                )
            else:
                assert replay.stream is not None and replay.after is not None
                changed = await tx.execute(
                    f"{reset} AND stream = $3 AND epoch = $4 AND position_offset > $5",
                    endpoint_id,
                    now_us,
                    replay.stream,
                    replay.after.epoch,
                    replay.after.offset,
                )
            if changed:
                await _reheads(tx, endpoint_id)
            return changed

        return await self._write(work)

    # -- the log ----------------------------------------------------------------------------------
    async def list_webhook_attempts(
        self: _Core, endpoint_id: str, limit: int, before: int | None = None, message_id: str | None = None
    ) -> list[Attempt]:
        args: list[Any] = [endpoint_id]
        where = "endpoint_id = $1"
        if message_id is not None:
            args.append(message_id)
            where += f" AND message_id = ${len(args)}"
        if before is not None:
            args.append(before)
            where += f" AND seq < ${len(args)}"
        args.append(limit)
        sql = (
            f"SELECT {_ATTEMPT_COLUMNS} FROM webhook_attempts WHERE {where}"
            f" ORDER BY seq DESC LIMIT ${len(args)}"
        )

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(sql, *args)

        return [_attempt(r) for r in await self.db.run(work, readonly=True, single_statement=True)]

    async def list_webhook_dead_letters(
        self: _Core, endpoint_id: str, limit: int, before: int | None = None
    ) -> list[Delivery]:
        args: list[Any] = [endpoint_id, before if before is not None else 2**62, limit]

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries"
                " WHERE endpoint_id = $1 AND status = 'dead' AND seq < $2 ORDER BY seq DESC LIMIT $3",
                *args,
            )

        return [_delivery(r) for r in await self.db.run(work, readonly=True, single_statement=True)]

    async def webhook_owner_usable(self: _Core, owner: str, now_us: int) -> bool:
        if not owner.startswith(_API_KEY_PREFIX):
            return True
        family = owner[len(_API_KEY_PREFIX) :]

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(f"{_API_KEY_SELECT} WHERE k.family_id = $1", family)

        rows = await self.db.run(work, readonly=True, single_statement=True)
        return any(_api_key(r).state(now_us).value in ("active", "rotating") for r in rows)

    async def purge_webhook_log(self: _Core, before_us: int) -> int:
        async def work(tx: Tx) -> int:
            gone = await tx.execute(
                "DELETE FROM webhook_deliveries WHERE updated_at < $1 AND status <> 'pending'", before_us
            )
            return gone + await tx.execute("DELETE FROM webhook_attempts WHERE at < $1", before_us)

        return await self._write(work)


async def _disable(
    core: _Core, tx: Tx, endpoint: WebhookEndpoint, reason: str, now_us: int
) -> WebhookEndpoint:
    """Disable ``endpoint`` (its row locked by ``tx``) and tell its owner on ``user:{owner}``."""
    await tx.execute(
        "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = $2, disabled_at = $3,"
        " version = version + 1, updated_at = $3 WHERE id = $1",
        endpoint.id,
        reason,
        now_us,
    )
    await tx.execute("DELETE FROM webhook_leases WHERE endpoint_id = $1", endpoint.id)
    notice: dict[str, Any] = {
        "type": "webhook.disabled",
        "webhook_id": endpoint.id,
        "url": endpoint.url,
        "reason": reason,
        "failing_since": endpoint.failing_since,
        "dead_letters": endpoint.dead_letters,
    }
    await core.user_event(tx, endpoint.owner, notice, now_us)
    return dataclasses.replace(
        endpoint,
        enabled=False,
        disabled_reason=reason,
        disabled_at=now_us,
        version=endpoint.version + 1,
        updated_at=now_us,
    )
