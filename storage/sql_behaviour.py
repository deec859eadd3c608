"""Behaviour events, consent and the recommendation aggregates in SQL (storage/behaviour.py states the
records and the guarantees).

A batch is one transaction of a fixed number of statements whatever its size: the user's row locked and
read (consent, recent products), the products' attributes read, the events inserted, and each aggregate
table's increments upserted — one statement each. On PostgreSQL the rows travel as arrays (``unnest``):
one prepared statement per table for every batch size; on SQLite as multi-row ``VALUES`` (statements run
in process, where a round trip costs nothing). The score's ``logaddexp`` runs in the database
(``ON CONFLICT … DO UPDATE``), on the newest row: concurrent batches add up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache, partial
from typing import Any, Protocol, TypeVar

import orjson

from storage.behaviour import (
    LANDMARK_US,
    PAIR_HALF_LIFE_US,
    PREFERENCE_HALF_LIFE_US,
    TRENDING_HALF_LIFE_US,
    BehaviourData,
    Candidate,
    Consent,
    ConsentChange,
    ConsentRequired,
    ConsentStatus,
    Increments,
    Ingested,
    NewEvent,
    Notified,
    Preference,
    Purged,
    Recent,
    Signals,
    StoredEvent,
    attribute_pairs,
    fold,
    product_ids,
    tau,
)
from storage.db import Database, Row, Tx
from storage.errors import Conflict

T = TypeVar("T")
_MAX_ROWS = 1000  # rows per upsert statement (SQLite's VALUES lists stay far below its 32,766 parameters)


class _Core(Protocol):
    db: Database

    async def _write(self, work: Callable[[Tx], Awaitable[T]], *, single_statement: bool = False) -> T: ...
    async def user_event(
        self, tx: Tx, sub: str, payload: dict[str, Any], ts: int, *, region: str | None = None
    ) -> None: ...


def _now() -> int:
    return time.time_ns() // 1000


@lru_cache(maxsize=256)
def _values(rows: int, width: int, first: int) -> str:
    """``($first, …), (…)``: ``rows`` tuples of ``width`` numbered placeholders."""
    return ", ".join(
        "(" + ", ".join(f"${first + r * width + c}" for c in range(width)) + ")" for r in range(rows)
    )


_USER = (
    "SELECT consent, consent_at, recent, region, listening_until FROM personalization_users WHERE sub = $1"
)
_EVENT_COLUMNS = "sub, type, product_id, query, attributes, region, ts, received_at, consent_at, expires_at"
_LOGADDEXP = {
    "postgres": "GREATEST({t}.score, excluded.score) + LN(1 + EXP(-ABS({t}.score - excluded.score)))",
    "sqlite": "max({t}.score, excluded.score) + ln(1 + exp(-abs({t}.score - excluded.score)))",
}


def _upsert_tail(dialect: str, table: str, keys: Sequence[str]) -> str:
    return (
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET score = {_LOGADDEXP[dialect].format(t=table)},"
        f" count = {table}.count + excluded.count, updated_at = excluded.updated_at"
    )


# -- PostgreSQL: a batch is two statements, each a transaction of its own (no BEGIN and COMMIT round
# trips, no lock held while Python folds the batch). The first reads the user's row (consent, recent
# products, version) and the attributes of the batch's products. The second writes everything, on one
# condition: the user's row is still at the version read, with consent granted — the UPDATE of that row
# comes first (the others read its result), so a revocation or another batch of the user's that committed
# in between makes it write nothing, and the batch is folded again from a fresh read. Each table's rows
# are handed over as one JSON array (asyncpg encodes one string, not thousands of array elements: that
# encoding was half the hub's CPU) and sorted, so concurrent batches lock the rows they share in one order.
_PG_READ = (
    "SELECT u.consent, u.consent_at, u.recent, u.listening_until, u.version,"
    " (SELECT json_object_agg(p.id, p.attributes) FROM products p WHERE p.id = ANY($2::text[]))::text"
    " AS attributes FROM personalization_users u WHERE u.sub = $1"
)
_WRITTEN = " WHERE EXISTS (SELECT 1 FROM written)"


def _pg_increments(table: str, keys: Sequence[str], source: str, fixed: str = "") -> str:
    """A data-modifying CTE's statement adding the increments in the JSON array ``source`` (rows of the
    ``keys`` not ``fixed``, then score and count) to ``table``; ``fixed``: the first key, a parameter."""
    read = [f"x->>{n}" for n in range(len(keys) - (1 if fixed else 0))]
    n = len(read)
    values = ", ".join(
        [*([fixed] if fixed else []), *read, f"(x->>{n})::float8", f"(x->>{n + 1})::bigint", "$2"]
    )
    return (
        f"INSERT INTO {table} ({', '.join(keys)}, score, count, updated_at)"
        f" SELECT {values} FROM json_array_elements({source}::json) AS x{_WRITTEN} ORDER BY {', '.join(read)}"
        + _upsert_tail("postgres", table, keys)
    )


# $1 sub, $2 now, $3 consent_at, $4 retention, $5 events, $6 co_viewed, $7 co_carted, $8 preferences,
# $9 trending, $10 recent, $11 region, $12 the version read
_PG_WRITE = (
    "WITH written AS (UPDATE personalization_users SET recent = $10, region = $11, last_event_at = $2,"
    " version = version + 1 WHERE sub = $1 AND version = $12 AND consent = 'granted' RETURNING 1),"
    f" events AS (INSERT INTO behaviour_events ({_EVENT_COLUMNS})"
    " SELECT $1, x->>0, x->>1, x->>2, x->>3, x->>4, (x->>5)::bigint, $2, $3, (x->>5)::bigint + $4"
    f" FROM json_array_elements($5::json) AS x{_WRITTEN}),"
    f" viewed AS ({_pg_increments('co_viewed', ('product_id', 'other_id'), '$6')}),"
    f" carted AS ({_pg_increments('co_carted', ('product_id', 'other_id'), '$7')}),"
    f" preferences AS ({_pg_increments('user_preferences', ('sub', 'attribute', 'value'), '$8', '$1')}),"
    f" trending AS ({_pg_increments('trending', ('region', 'product_id'), '$9')})"
    " SELECT COUNT(*) AS written FROM written"
)
_PG_ATTEMPTS = 20  # a user's concurrent batches, folded again after another's commit

# -- SQLite: the statements run in process (a round trip costs nothing); rows as multi-row VALUES.
_SQLITE_ATTRIBUTES = "SELECT id, attributes FROM products WHERE id IN (SELECT value FROM json_each($1))"
# (table, key columns): the aggregates, in the order every batch writes them
_AGGREGATES = (
    ("co_viewed", ("product_id", "other_id")),
    ("co_carted", ("product_id", "other_id")),
    ("user_preferences", ("sub", "attribute", "value")),
    ("trending", ("region", "product_id")),
)


@lru_cache(maxsize=256)
def _sqlite_upsert(table: str, keys: tuple[str, ...], rows: int) -> str:
    width = len(keys) + 3
    return (
        f"INSERT INTO {table} ({', '.join(keys)}, score, count, updated_at) VALUES {_values(rows, width, 1)}"
        + _upsert_tail("sqlite", table, keys)
    )


@lru_cache(maxsize=20_000)
def _pairs_of(attributes: str) -> list[tuple[str, str]]:
    """The preference pairs of a product's attributes as stored (JSON text): the same text, the same
    pairs — read once per text, not once per event."""
    parsed = orjson.loads(attributes)
    return attribute_pairs(parsed) if isinstance(parsed, dict) else []


def _consent(sub: str, row: Row) -> Consent:
    return Consent(sub, ConsentStatus(row["consent"]), int(row["consent_at"]))


def _stored_event(row: Row) -> StoredEvent:
    attributes = row["attributes"]
    return StoredEvent(
        id=int(row["id"]),
        type=row["type"],
        product_id=row["product_id"],
        query=row["query"],
        attributes=None if attributes is None else orjson.loads(attributes),
        region=row["region"],
        ts=int(row["ts"]),
        received_at=int(row["received_at"]),
        consent_at=int(row["consent_at"]),
        expires_at=int(row["expires_at"]),
    )


# PostgreSQL: a user's recommendations' signals in one call, one round trip and no transaction, of
# migration 12's function (storage/behaviour_schema.py states what it reads). $1 sub, $2 default region,
# $3 neighbours, $4 trending, $5 preferences; now, as each decay's exponent: $6 pairs', $7 trending's,
# $8 preferences'.
_PG_SIGNALS = "SELECT * FROM synchub_recommendation_signals($1, $2, $3, $4, $5, $6, $7, $8)"
_SQLITE_CANDIDATES = (
    "SELECT p.id, p.sku, p.name, p.category, p.price_units, p.status, p.attributes, p.low_stock_threshold,"
    " COALESCE((SELECT SUM(s.on_hand - s.reserved) FROM stock s JOIN warehouses w ON w.id = s.warehouse_id"
    " WHERE s.product_id = p.id AND w.region = $2), 0) AS available FROM products p"
    " WHERE p.id IN (SELECT value FROM json_each($1))"
)
_IN_LIST = {
    "postgres": "= ANY($1::text[])",
    "sqlite": "IN (SELECT value FROM json_each($1))",
}


def _list_arg(dialect: str, values: Sequence[str]) -> Any:
    """A list of texts as ``_IN_LIST`` takes it: an array (PostgreSQL) or a JSON array (SQLite)."""
    return list(values) if dialect == "postgres" else orjson.dumps(list(values)).decode()


@lru_cache(maxsize=20_000)
def _attributes_of(text: str) -> dict[str, Any]:
    """A product's attributes, parsed once per text (the dict is shared: read it, never change it)."""
    parsed = orjson.loads(text)
    return parsed if isinstance(parsed, dict) else {}


def _candidate(row: Row, product_id: str, sku: str) -> Candidate:
    return Candidate(
        product_id,
        sku,
        row["name"],
        row["category"],
        row["price_units"],
        row["status"],
        _attributes_of(row["attributes"]),
        row["low_stock_threshold"],
        row["available"],
    )


class BehaviourSql:
    # -- consent -----------------------------------------------------------------------------------

    async def get_consent(self: _Core, sub: str) -> Consent | None:
        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT consent, consent_at FROM personalization_users WHERE sub = $1", sub
            )

        row = await self.db.run(work, readonly=True, single_statement=True)
        return None if row is None else _consent(sub, row)

    async def set_consent(self: _Core, sub: str, status: ConsentStatus) -> ConsentChange:
        """Grant (from now on) or revoke consent. A revocation deletes, in the same transaction, the
        user's events, preferences and recent products; granting or revoking again keeps the first
        time."""

        async def work(tx: Tx) -> ConsentChange:
            ts = _now()
            row = await tx.fetchrow(
                "INSERT INTO personalization_users (sub, consent, consent_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (sub) DO UPDATE SET consent = excluded.consent,"
                " version = personalization_users.version + 1, consent_at = CASE"
                " WHEN personalization_users.consent = excluded.consent THEN personalization_users.consent_at"
                " ELSE excluded.consent_at END RETURNING consent, consent_at",
                sub,
                status.value,
                ts,
            )
            assert row is not None
            if status is ConsentStatus.GRANTED:
                return ConsentChange(_consent(sub, row), 0, 0)
            await tx.execute("UPDATE personalization_users SET recent = '' WHERE sub = $1", sub)
            events = await tx.execute("DELETE FROM behaviour_events WHERE sub = $1", sub)
            preferences = await tx.execute("DELETE FROM user_preferences WHERE sub = $1", sub)
            return ConsentChange(_consent(sub, row), events, preferences)

        return await self._write(work)

    # -- events --------------------------------------------------------------------------------------

    async def ingest_events(self: _Core, sub: str, events: Sequence[NewEvent], retention_us: int) -> Ingested:
        """Store ``events`` (expiring ``retention_us`` after each one's time) and add their increments to
        the aggregates, in one transaction; ConsentRequired, and nothing stored, unless the user's
        consent is granted."""
        dialect = self.db.dialect
        wanted = product_ids(events)

        if dialect == "postgres":
            for _ in range(_PG_ATTEMPTS):
                user = await self.db.run(partial(_pg_read, sub, wanted), readonly=True, single_statement=True)
                prepared = _pg_batch(sub, events, retention_us, user)
                assert user is not None
                if await self._write(partial(_pg_write, prepared), single_statement=True):
                    return Ingested(len(events), prepared[2], int(user["listening_until"]))
            raise Conflict(
                f"{_PG_ATTEMPTS} of the user's other batches were stored meanwhile, not this one: send it"
                " again",
                code="concurrent_batches",
            )
        return await self._write(partial(_sqlite_ingest, sub, events, wanted, retention_us))

    async def purge_behaviour(self: _Core, now_us: int, retention_us: int, limit: int = 10_000) -> Purged:
        """Delete up to ``limit`` expired events, and up to ``limit`` preferences no event has fed for the
        retention period. Run again while it finds some."""

        async def work(tx: Tx) -> Purged:
            events = await tx.execute(
                "DELETE FROM behaviour_events WHERE id IN"
                " (SELECT id FROM behaviour_events WHERE expires_at <= $1 LIMIT $2)",
                now_us,
                limit,
            )
            preferences = await tx.execute(
                "DELETE FROM user_preferences WHERE (sub, attribute, value) IN (SELECT sub, attribute, value"
                " FROM user_preferences WHERE updated_at <= $1 LIMIT $2)",
                now_us - retention_us,
                limit,
            )
            return Purged(events, preferences)

        return await self._write(work)

    # -- recommendations ---------------------------------------------------------------------------

    async def recommendation_signals(
        self: _Core,
        sub: str,
        default_region: str,
        *,
        neighbours: int = 5,
        trending: int = 50,
        preferences: int = 20,
    ) -> Signals:
        """Everything that ranks ``sub``'s recommendations: their consent, region (their last events', else
        ``default_region``) and recent products; each recent product's top ``neighbours`` co-viewed and
        co-carted products; the region's top ``trending``; their top ``preferences``; and each product
        named, with its stock in the region."""
        now = _now()
        pair_now = (now - LANDMARK_US) / tau(PAIR_HALF_LIFE_US)
        trending_now = (now - LANDMARK_US) / tau(TRENDING_HALF_LIFE_US)
        preference_now = (now - LANDMARK_US) / tau(PREFERENCE_HALF_LIFE_US)
        if self.db.dialect == "postgres":

            async def read(tx: Tx) -> list[Row]:
                return await tx.fetch(
                    _PG_SIGNALS,
                    sub,
                    default_region,
                    neighbours,
                    trending,
                    preferences,
                    pair_now,
                    trending_now,
                    preference_now,
                )

            return _pg_signals(sub, await self.db.run(read, readonly=True, single_statement=True), now)

        async def work(tx: Tx) -> Signals:
            user = await tx.fetchrow(_USER, sub)
            consent = None if user is None else ConsentStatus(user["consent"])
            region = (user["region"] if user is not None else None) or default_region
            recent = Recent.decode(user["recent"]) if consent is ConsentStatus.GRANTED and user else Recent()
            seen = recent.products()
            sums: dict[str, dict[str, float]] = {"co_viewed": {}, "co_carted": {}}
            for source, table in ((recent.views, "co_viewed"), (recent.carts, "co_carted")):
                out = sums[table]
                for product, _ in source:
                    for row in await tx.fetch(
                        f"SELECT other_id, score FROM {table} WHERE product_id = $1"
                        " ORDER BY score DESC LIMIT $2",
                        product,
                        neighbours,
                    ):
                        other = row["other_id"]
                        if other not in seen:
                            out[other] = out.get(other, 0.0) + math.exp(max(row["score"] - pair_now, -700))
            top = {
                r["product_id"]: math.exp(max(r["score"] - trending_now, -700))
                for r in await tx.fetch(
                    "SELECT product_id, score FROM trending WHERE region = $1 ORDER BY score DESC LIMIT $2",
                    region,
                    trending,
                )
                if r["product_id"] not in seen
            }
            prefs: list[tuple[str, str, float]] = []
            if consent is ConsentStatus.GRANTED:
                prefs = [
                    (r["attribute"], r["value"], math.exp(max(r["score"] - preference_now, -700)))
                    for r in await tx.fetch(
                        "SELECT attribute, value, score FROM user_preferences WHERE sub = $1"
                        " ORDER BY score DESC LIMIT $2",
                        sub,
                        preferences,
                    )
                ]
            named = sorted(sums["co_viewed"].keys() | sums["co_carted"].keys() | top.keys())
            products: dict[str, Candidate] = {}
            if named:
                for row in await tx.fetch(_SQLITE_CANDIDATES, orjson.dumps(named).decode(), region):
                    products[row["id"]] = _candidate(row, row["id"], row["sku"])
            return Signals(
                sub, consent, region, sums["co_viewed"], sums["co_carted"], top, prefs, products, now
            )

        return await self.db.run(work, readonly=True)

    async def notify_recommendations(
        self: _Core, sub: str, etag: str, payload: dict[str, Any], min_interval_us: int
    ) -> Notified:
        """Append ``payload`` to ``sub``'s user events unless ``etag`` is the last one notified, or one was
        notified less than ``min_interval_us`` ago (by any node: the row says when; then ``retry_at``)."""

        async def work(tx: Tx) -> Notified:
            ts = _now()
            changed = await tx.execute(
                "UPDATE personalization_users SET notified_etag = $2, notified_at = $3"
                " WHERE sub = $1 AND notified_etag <> $2 AND notified_at <= $4",
                sub,
                etag,
                ts,
                ts - min_interval_us,
            )
            if changed:
                await self.user_event(tx, sub, payload, ts)
                return Notified(True)
            row = await tx.fetchrow(
                "SELECT notified_etag, notified_at FROM personalization_users WHERE sub = $1", sub
            )
            if row is None or row["notified_etag"] == etag:
                return Notified(False)
            return Notified(False, int(row["notified_at"]) + min_interval_us)

        return await self._write(work)

    async def mark_listening(self: _Core, subs: Sequence[str], until_us: int) -> None:
        """A node holds live user:{sub} subscriptions of ``subs`` until ``until_us`` (unless it says so
        again): a batch of their events taken on another node is then looked at again there."""
        if not subs:
            return
        dialect = self.db.dialect

        async def work(tx: Tx) -> None:
            await tx.execute(
                f"UPDATE personalization_users SET listening_until = $2 WHERE sub {_IN_LIST[dialect]}"
                " AND listening_until < $2",
                _list_arg(dialect, sorted(subs)),
                until_us,
            )

        await self._write(work, single_statement=True)

    # -- a user's export and erasure (storage/sql_privacy.py calls these in its transactions) -------

    async def _behaviour_data(self: _Core, tx: Tx, sub: str) -> BehaviourData:
        user = await tx.fetchrow("SELECT consent, consent_at FROM personalization_users WHERE sub = $1", sub)
        events = await tx.fetch(
            f"SELECT id, {_EVENT_COLUMNS} FROM behaviour_events WHERE sub = $1 ORDER BY id", sub
        )
        prefs = await tx.fetch(
            "SELECT attribute, value, score, count, updated_at FROM user_preferences WHERE sub = $1"
            " ORDER BY attribute, value",
            sub,
        )
        return BehaviourData(
            consent=None if user is None else _consent(sub, user),
            events=[_stored_event(r) for r in events],
            preferences=[
                Preference(
                    r["attribute"], r["value"], float(r["score"]), int(r["count"]), int(r["updated_at"])
                )
                for r in prefs
            ],
        )

    async def _erase_behaviour(self: _Core, tx: Tx, sub: str) -> int:
        """Delete the user's consent record, recent products, preferences and events; the events' count."""
        await tx.execute("DELETE FROM personalization_users WHERE sub = $1", sub)
        await tx.execute("DELETE FROM user_preferences WHERE sub = $1", sub)
        return await tx.execute("DELETE FROM behaviour_events WHERE sub = $1", sub)


async def _sqlite_ingest(
    sub: str, events: Sequence[NewEvent], wanted: list[str], retention_us: int, tx: Tx
) -> Ingested:
    """The batch on SQLite: a statement per table (in process)."""
    user = await tx.fetchrow(_USER, sub)
    if user is None or user["consent"] != ConsentStatus.GRANTED:
        raise ConsentRequired("the user has not granted consent to personalization")
    consent_at = int(user["consent_at"])
    now = _now()
    attributes: dict[str, list[tuple[str, str]]] = {}
    if wanted:
        for row in await tx.fetch(_SQLITE_ATTRIBUTES, orjson.dumps(wanted).decode()):
            attributes[row["id"]] = _pairs_of(row["attributes"])
    args: list[Any] = []
    for e in events:
        encoded = None if e.attributes is None else orjson.dumps(e.attributes).decode()
        args += (
            sub,
            e.type,
            e.product_id,
            e.query,
            encoded,
            e.region,
            e.ts,
            now,
            consent_at,
            e.ts + retention_us,
        )
    await tx.execute(
        f"INSERT INTO behaviour_events ({_EVENT_COLUMNS}) VALUES {_values(len(events), 10, 1)}", *args
    )
    recent = Recent.decode(user["recent"])
    increments = fold(recent, events, attributes)
    tables: dict[str, list[tuple[Any, ...]]] = {
        "co_viewed": Increments.pair_rows(increments.co_viewed),
        "co_carted": Increments.pair_rows(increments.co_carted),
        "user_preferences": [(sub, *row) for row in Increments.rows(increments.preferences)],
        "trending": Increments.rows(increments.trending),
    }
    for table, keys in _AGGREGATES:
        rows = tables[table]
        for start in range(0, len(rows), _MAX_ROWS):
            chunk = rows[start : start + _MAX_ROWS]
            values = [value for row in chunk for value in (*row, now)]
            await tx.execute(_sqlite_upsert(table, keys, len(chunk)), *values)
    await tx.execute(
        "UPDATE personalization_users SET recent = $2, region = $3, last_event_at = $4 WHERE sub = $1",
        sub,
        recent.encode(),
        events[-1].region,
        now,
    )
    return Ingested(len(events), consent_at, int(user["listening_until"]))


async def _pg_read(sub: str, wanted: list[str], tx: Tx) -> Row | None:
    return await tx.fetchrow(_PG_READ, sub, wanted)


def _pg_batch(sub: str, events: Sequence[NewEvent], retention_us: int, user: Row | None) -> tuple[Any, ...]:
    """_PG_WRITE's arguments for the batch folded on ``user``'s row as read; ConsentRequired without
    consent."""
    if user is None or user["consent"] != ConsentStatus.GRANTED:
        raise ConsentRequired("the user has not granted consent to personalization")
    found = orjson.loads(user["attributes"]) if user["attributes"] else {}
    attributes = {product: _pairs_of(text) for product, text in found.items()}
    recent = Recent.decode(user["recent"])
    increments = fold(recent, events, attributes)
    rows = [
        (
            e.type,
            e.product_id,
            e.query,
            None if e.attributes is None else orjson.dumps(e.attributes).decode(),
            e.region,
            e.ts,
        )
        for e in events
    ]
    return (
        sub,
        _now(),
        int(user["consent_at"]),
        retention_us,
        orjson.dumps(rows).decode(),
        orjson.dumps(Increments.pair_rows(increments.co_viewed)).decode(),
        orjson.dumps(Increments.pair_rows(increments.co_carted)).decode(),
        orjson.dumps(Increments.rows(increments.preferences)).decode(),
        orjson.dumps(Increments.rows(increments.trending)).decode(),
        recent.encode(),
        events[-1].region,
        int(user["version"]),
    )


async def _pg_write(args: tuple[Any, ...], tx: Tx) -> bool:
    row = await tx.fetchrow(_PG_WRITE, *args)
    return row is not None and int(row["written"]) == 1


def _pg_signals(sub: str, rows: list[Row], now: int) -> Signals:
    consent: ConsentStatus | None = None
    region = ""
    co_viewed: dict[str, float] = {}
    co_carted: dict[str, float] = {}
    top: dict[str, float] = {}
    prefs: list[tuple[str, str, float]] = []
    products: dict[str, Candidate] = {}
    for row in rows:
        kind = row["kind"]
        if kind == "x":
            product = row["id"]
            products[product] = _candidate(row, product, row["b"])
            if row["viewed"] is not None:
                co_viewed[product] = row["viewed"]
            if row["carted"] is not None:
                co_carted[product] = row["carted"]
            if row["trending"] is not None:
                top[product] = row["trending"]
        elif kind == "p":
            prefs.append((row["id"], row["b"], row["viewed"]))
        elif kind == "u":
            consent = ConsentStatus(row["id"])
        else:
            region = row["b"]
    return Signals(sub, consent, region, co_viewed, co_carted, top, prefs, products, now)
