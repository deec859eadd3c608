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

# A user's recommendations' signals (storage/sql_behaviour.py calls it; storage/behaviour.Signals): the
# user's row (its recent products parsed from their JSON), each recent product's top neighbours (read
# along the (product_id, score DESC) indexes), the region's top trending products, summed per candidate
# and decayed to now in the database (no pair leaves it: a row per candidate does), each candidate with
# its product and its stock in the region (looked up by key: the LATERAL subqueries keep the planner from
# hashing the whole catalog and stock for a hundred rows), and the user's top preferences; rows of kinds x
# (a candidate), p (a preference), u (the user), r (the region). A function for its plan: PL/pgSQL keeps
# the query's plan for the session, generic (the SET clause) — re-planned for each call's parameters, as
# a prepared statement's custom plans were, the statement took 4.4 ms where the generic plan takes 2.7.
_PG_SIGNALS_FUNCTION = """
CREATE FUNCTION synchub_recommendation_signals(
    p_sub text, p_region text, p_neighbours integer, p_trending integer, p_preferences integer,
    p_pair_now double precision, p_trending_now double precision, p_preference_now double precision)
RETURNS TABLE (kind text, id text, b text, attributes text, name text, category text, price_units bigint,
               status text, low_stock_threshold integer, available bigint, viewed double precision,
               carted double precision, trending double precision)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $function$
#variable_conflict use_column
BEGIN
RETURN QUERY
WITH u AS (SELECT consent, region, recent FROM personalization_users WHERE sub = p_sub),
doc AS (SELECT recent::json AS j FROM u WHERE consent = 'granted' AND recent <> ''),
seen AS (
    SELECT DISTINCT e->>0 AS id
    FROM doc, json_array_elements(doc.j->'v') AS e
    UNION SELECT e->>0 FROM doc, json_array_elements(doc.j->'c') AS e
    UNION SELECT e->>0 FROM doc, json_array_elements(doc.j->'w') AS e
),
reg AS (SELECT COALESCE((SELECT region FROM u), p_region) AS region),
nb AS (
    SELECT 'v' AS kind, n.other_id AS id, n.score - p_pair_now AS weight
    FROM (SELECT e->>0 AS id FROM doc, json_array_elements(doc.j->'v') AS e) AS r
    CROSS JOIN LATERAL (SELECT other_id, score FROM co_viewed WHERE product_id = r.id
                        ORDER BY score DESC LIMIT p_neighbours) AS n
    UNION ALL
    SELECT 'c', n.other_id, n.score - p_pair_now
    FROM (SELECT e->>0 AS id FROM doc, json_array_elements(doc.j->'c') AS e) AS r
    CROSS JOIN LATERAL (SELECT other_id, score FROM co_carted WHERE product_id = r.id
                        ORDER BY score DESC LIMIT p_neighbours) AS n
    UNION ALL
    (SELECT 't', product_id, score - p_trending_now FROM trending WHERE region = (SELECT region FROM reg)
     ORDER BY score DESC LIMIT p_trending)
),
cand AS (
    SELECT id,
           SUM(EXP(GREATEST(weight, -700))) FILTER (WHERE kind = 'v') AS viewed,
           SUM(EXP(GREATEST(weight, -700))) FILTER (WHERE kind = 'c') AS carted,
           MAX(EXP(GREATEST(weight, -700))) FILTER (WHERE kind = 't') AS trending
    FROM nb WHERE id NOT IN (SELECT id FROM seen) GROUP BY id
),
here AS (SELECT id FROM warehouses WHERE region = (SELECT region FROM reg))
SELECT 'x' AS kind, p.id, p.sku AS b, p.attributes, p.name, p.category, p.price_units, p.status,
       p.low_stock_threshold, COALESCE(st.available, 0)::bigint AS available,
       cand.viewed, cand.carted, cand.trending
FROM cand
CROSS JOIN LATERAL (SELECT id, sku, attributes, name, category, price_units, status, low_stock_threshold
                    FROM products WHERE id = cand.id LIMIT 1) AS p
CROSS JOIN LATERAL (SELECT SUM(s.on_hand - s.reserved) AS available FROM stock s
                    WHERE s.product_id = cand.id AND s.warehouse_id IN (SELECT id FROM here)) AS st
UNION ALL
(SELECT 'p', attribute, value, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        EXP(GREATEST(score - p_preference_now, -700)), NULL, NULL
 FROM user_preferences WHERE sub = p_sub AND EXISTS (SELECT 1 FROM doc)
 ORDER BY score DESC LIMIT p_preferences)
UNION ALL
SELECT 'u', consent, (SELECT region FROM reg), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM u
UNION ALL
SELECT 'r', NULL, (SELECT region FROM reg), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL;
END
$function$
"""

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
    # Covering: a product's top neighbours are read from the index alone where the visibility map allows
    # (at a million events, p50 2.0 -> 1.7 ms and p99 6.7 -> 5.3 ms for the whole read); SQLite has no
    # INCLUDE, and a third key column covers as well there.
    *(
        (dialect, f"CREATE INDEX {table}_top ON {table} {columns}")
        for table in ("co_viewed", "co_carted")
        for dialect, columns in (
            ("postgres", "(product_id, score DESC) INCLUDE (other_id)"),
            ("sqlite", "(product_id, score DESC, other_id)"),
        )
    ),
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
    ("postgres", _PG_SIGNALS_FUNCTION),
]

TABLES = (
    "personalization_users",
    "behaviour_events",
    "co_viewed",
    "co_carted",
    "user_preferences",
    "trending",
)
