"""Migration 11: schools, their assets, parts requests, their lines and the backorder queue; and the
index that answers products' attribute filters on PostgreSQL (:mod:`storage.attributes`).

Written in :mod:`storage.migrations`' portable SQL (``{seq_pk}``: an auto-incrementing key). Dates
(``needed_by``) are ISO text, ``YYYY-MM-DD``, which sorts as dates do; times are epoch microseconds.
"""

from __future__ import annotations

MIGRATION_11: list[str | tuple[str, str]] = [
    """
    CREATE TABLE schools (
        id TEXT {bytewise} PRIMARY KEY,
        name TEXT NOT NULL,
        region TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        version BIGINT NOT NULL
    )
    """,
    # The API keys a school's platform calls with: the family id of each (the id of the first key of its
    # rotations, hub/api_keys.py), so that a rotated key stays bound.
    """
    CREATE TABLE school_api_keys (
        school_id TEXT NOT NULL REFERENCES schools (id) ON DELETE CASCADE,
        key_family TEXT NOT NULL,
        PRIMARY KEY (school_id, key_family)
    )
    """,
    "CREATE INDEX school_api_keys_by_key ON school_api_keys (key_family)",
    """
    CREATE TABLE school_assets (
        id TEXT PRIMARY KEY,
        school_id TEXT NOT NULL REFERENCES schools (id),
        asset_tag TEXT {bytewise} NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('vehicle', 'equipment')),
        make TEXT NOT NULL,
        model TEXT NOT NULL,
        year INTEGER,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        version BIGINT NOT NULL,
        UNIQUE (school_id, asset_tag)
    )
    """,
    # answer: the first answer, replayed to a retry with the same key (request_hash: of its body).
    """
    CREATE TABLE parts_requests (
        id TEXT PRIMARY KEY,
        school_id TEXT NOT NULL REFERENCES schools (id),
        asset_id TEXT NOT NULL REFERENCES school_assets (id),
        region TEXT NOT NULL,
        needed_by TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN
            ('requested', 'reserved', 'backordered', 'picked', 'shipped', 'delivered', 'cancelled')),
        policy TEXT NOT NULL CHECK (policy IN ('all_or_none', 'partial')),
        idempotency_key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        answer TEXT NOT NULL DEFAULT '',
        reservation_id TEXT,
        created_by TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        version BIGINT NOT NULL,
        UNIQUE (school_id, idempotency_key)
    )
    """,
    # Newest first, per school, optionally of one status or asset: keyset pages along these.
    "CREATE INDEX parts_requests_by_school ON parts_requests (school_id, created_at, id)",
    "CREATE INDEX parts_requests_by_status ON parts_requests (school_id, status, created_at, id)",
    "CREATE INDEX parts_requests_by_asset ON parts_requests (school_id, asset_id, created_at, id)",
    """
    CREATE TABLE parts_request_lines (
        request_id TEXT NOT NULL REFERENCES parts_requests (id) ON DELETE CASCADE,
        line_no INTEGER NOT NULL,
        sku TEXT NOT NULL,
        query TEXT,
        product_id TEXT NOT NULL,
        quantity BIGINT NOT NULL CHECK (quantity > 0),
        reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
        backordered BIGINT NOT NULL DEFAULT 0 CHECK (backordered >= 0),
        reservation_id TEXT,
        CHECK (reserved + backordered <= quantity),
        PRIMARY KEY (request_id, line_no)
    )
    """,
    "CREATE INDEX parts_request_lines_by_product ON parts_request_lines (product_id)",
    # The queue of a product in a region: seq order is request order (taken under the queue's lock).
    """
    CREATE TABLE parts_backorders (
        seq {seq_pk},
        product_id TEXT NOT NULL,
        region TEXT NOT NULL,
        request_id TEXT NOT NULL REFERENCES parts_requests (id) ON DELETE CASCADE,
        line_no INTEGER NOT NULL,
        queued_at BIGINT NOT NULL,
        UNIQUE (request_id, line_no)
    )
    """,
    "CREATE INDEX parts_backorders_queue ON parts_backorders (product_id, region, seq)",
    # Attribute filters (attr.fitment.make=Ford): containment on the attributes' jsonb form. The column
    # stays TEXT — its bytes are products' representations and ETags — and the index holds the cast,
    # which every filter writes identically (storage/attributes.py).
    (
        "postgres",
        "CREATE INDEX products_attributes ON products USING GIN ((attributes::jsonb) jsonb_path_ops)",
    ),
]
