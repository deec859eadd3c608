"""Migration 12: behaviour events, users' consent to personalization, and the aggregates recommendations
are read from (:mod:`storage.behaviour` states what each holds).

Written in :mod:`storage.migrations`' portable SQL. Sized for PostgreSQL at millions of events:

* ``behaviour_events`` has two secondary indexes and no others: ``(sub, id)`` for a user's export,
  revocation and erasure, and ``expires_at`` for the retention purge — on PostgreSQL a BRIN index (a
  few pages for millions of rows, nearly free to maintain: events arrive in time order, so their
  expiries do too), on SQLite a B-tree;
* each aggregate has its key and one index read in order: a product's co-viewed and co-carted
  neighbours by score, a region's trending products by score (top-k reads stop after k rows);
  ``user_preferences`` is read by its key's prefix (a user's rows) and purged by ``updated_at``;
* scores are doubles (``DOUBLE PRECISION``: REAL on SQLite); users' names and attributes are compared
  bytewise on PostgreSQL (``COLLATE "C"``: cheaper than a locale's), product ids in the collation of
  ``products.id`` and ``stock.product_id``, whose indexes the recommendations' reads join on (a
  comparison across collations cannot use them).
"""

from __future__ import annotations

_AGGREGATE_COLUMNS = """
        score DOUBLE PRECISION NOT NULL,
        count BIGINT NOT NULL,
        updated_at BIGINT NOT NULL"""

MIGRATION_12: list[str | tuple[str, str]] = [
    """
    CREATE TABLE personalization_users (
        sub TEXT {bytewise} PRIMARY KEY,
        consent TEXT NOT NULL CHECK (consent IN ('granted', 'revoked')),
        consent_at BIGINT NOT NULL,
        region TEXT,
        recent TEXT NOT NULL DEFAULT '',
        last_event_at BIGINT,
        listening_until BIGINT NOT NULL DEFAULT 0,
        notified_etag TEXT NOT NULL DEFAULT '',
        notified_at BIGINT NOT NULL DEFAULT 0,
        version BIGINT NOT NULL DEFAULT 0
    )
    """,
    """
    CREATE TABLE behaviour_events (
        id {seq_pk},
        sub TEXT {bytewise} NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('view', 'search', 'filter', 'add_to_cart', 'wishlist')),
        product_id TEXT,
        query TEXT,
        attributes TEXT,
        region TEXT NOT NULL,
        ts BIGINT NOT NULL,
        received_at BIGINT NOT NULL,
        consent_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    )
    """,
    "CREATE INDEX behaviour_events_by_user ON behaviour_events (sub, id)",
    ("postgres", "CREATE INDEX behaviour_events_by_expiry ON behaviour_events USING BRIN (expires_at)"),
    ("sqlite", "CREATE INDEX behaviour_events_by_expiry ON behaviour_events (expires_at)"),
    *(
        f"""
    CREATE TABLE {table} (
        product_id TEXT NOT NULL,
        other_id TEXT NOT NULL,{_AGGREGATE_COLUMNS},
        PRIMARY KEY (product_id, other_id)
    )
    """
        for table in ("co_viewed", "co_carted")
    ),
    "CREATE INDEX co_viewed_top ON co_viewed (product_id, score DESC)",
    "CREATE INDEX co_carted_top ON co_carted (product_id, score DESC)",
    f"""
    CREATE TABLE user_preferences (
        sub TEXT {{bytewise}} NOT NULL,
        attribute TEXT {{bytewise}} NOT NULL,
        value TEXT {{bytewise}} NOT NULL,{_AGGREGATE_COLUMNS},
        PRIMARY KEY (sub, attribute, value)
    )
    """,
    "CREATE INDEX user_preferences_by_age ON user_preferences (updated_at)",
    f"""
    CREATE TABLE trending (
        region TEXT NOT NULL,
        product_id TEXT NOT NULL,{_AGGREGATE_COLUMNS},
        PRIMARY KEY (region, product_id)
    )
    """,
    "CREATE INDEX trending_top ON trending (region, score DESC)",
]

TABLES = (
    "personalization_users",
    "behaviour_events",
    "co_viewed",
    "co_carted",
    "user_preferences",
    "trending",
)
