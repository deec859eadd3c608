"""The schema, one list of migrations for every backend.

The SQL is portable on purpose so that SQLite and PostgreSQL hold the same tables and columns
(``tests/test_migrations.py`` compares them). Two tokens are filled in per dialect:
``{seq_pk}`` (an auto-incrementing integer key), ``{bytewise}`` (a collation that orders text by
code point, so that keyset cursors sort identically on both backends) and ``{blob}`` (bytes: a CRDT
state in the codec's binary form).

Timestamps are epoch microseconds (BIGINT), prices are integers of 1/10,000 of a unit, ids are text
UUIDs, JSON is text: every value round-trips exactly on both backends.

A statement written as ``(dialect, sql)`` runs on that dialect only (taken verbatim: no tokens), for
what one backend does in its own way — PostgreSQL's batched reservations (:mod:`storage.pg_reserve`).
Every migration version is recorded on every backend, so versions stay aligned.
"""

from __future__ import annotations

from storage import pg_reserve, webhooks_schema
from storage.behaviour_schema import MIGRATION_12
from storage.parts_schema import MIGRATION_11

Statement = str | tuple[str, str]

DIALECT_TOKENS: dict[str, dict[str, str]] = {
    "sqlite": {"seq_pk": "INTEGER PRIMARY KEY AUTOINCREMENT", "bytewise": "", "blob": "BLOB"},
    "postgres": {
        "seq_pk": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "bytewise": 'COLLATE "C"',
        "blob": "BYTEA",
    },
}

# Migration 8. The audit log is append-only on both databases: a trigger refuses every DELETE, and every
# UPDATE but an erasure's, which may only replace a subject (actor_sub, target_id) by a pseudonym
# ('erased:…') and never change a pseudonym again (storage/privacy.py). TRUNCATE is no row operation:
# it stays with the database's owner (the tests empty the table with it).
_AUDIT_FROZEN = ("seq", "at", "actor_roles", "action", "target_kind", "request_id", "detail")
_PG_AUDIT_TRIGGER = f"""
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit_log is append-only: entries are never deleted'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF {" OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in _AUDIT_FROZEN)}
       OR (NEW.actor_sub IS DISTINCT FROM OLD.actor_sub
           AND (OLD.actor_sub LIKE 'erased:%' OR NEW.actor_sub NOT LIKE 'erased:%'))
       OR (NEW.target_id IS DISTINCT FROM OLD.target_id
           AND (OLD.target_id LIKE 'erased:%' OR NEW.target_id NOT LIKE 'erased:%')) THEN
        RAISE EXCEPTION 'audit_log is append-only: only an erasure pseudonymises a subject'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        RETURN NEW;
    END IF;
    RETURN OLD;
END
$$
"""
_SQLITE_AUDIT_CHANGE = " OR ".join(
    [
        *(f"NEW.{c} IS NOT OLD.{c}" for c in _AUDIT_FROZEN),
        "(NEW.actor_sub IS NOT OLD.actor_sub"
        " AND (OLD.actor_sub LIKE 'erased:%' OR NEW.actor_sub NOT LIKE 'erased:%'))",
        "(NEW.target_id IS NOT OLD.target_id"
        " AND (OLD.target_id LIKE 'erased:%' OR NEW.target_id NOT LIKE 'erased:%'))",
    ]
)
MIGRATION_8: list[Statement] = [
    """
    CREATE TABLE audit_log (
        seq {seq_pk},
        at BIGINT NOT NULL,
        actor_sub TEXT NOT NULL,
        actor_roles TEXT NOT NULL DEFAULT '[]',
        action TEXT NOT NULL,
        target_kind TEXT NOT NULL DEFAULT '',
        target_id TEXT NOT NULL DEFAULT '',
        request_id TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '{{}}'
    )
    """,
    "CREATE INDEX audit_log_by_actor ON audit_log (actor_sub, seq)",
    "CREATE INDEX audit_log_by_target ON audit_log (target_kind, target_id, seq)",
    "CREATE INDEX audit_log_by_action ON audit_log (action, seq)",
    "CREATE INDEX audit_log_by_time ON audit_log (at)",
    ("postgres", _PG_AUDIT_TRIGGER),
    (
        "postgres",
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log"
        " FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
    ),
    (
        "sqlite",
        "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log"
        " BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: entries are never deleted'); END",
    ),
    (
        "sqlite",
        f"CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log WHEN {_SQLITE_AUDIT_CHANGE}"
        " BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: only an erasure pseudonymises a subject');"
        " END",
    ),
    # email, phone: the hub's AES-GCM ciphertexts ("pii1:{key id}:…", hub/pii.py); key_id: the key the
    # row was last written under, so that the rows under a retired key can be found.
    """
    CREATE TABLE user_profiles (
        sub TEXT PRIMARY KEY,
        display_name TEXT,
        email_ciphertext TEXT,
        phone_ciphertext TEXT,
        key_id TEXT,
        version BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )
    """,
    "CREATE INDEX user_profiles_by_key ON user_profiles (key_id)",
    # A user's rows, found without a scan by the export and the erasure.
    "CREATE INDEX reservations_by_owner ON reservations (owner)",
    "CREATE INDEX review_votes_by_voter ON review_votes (voter)",
    "CREATE INDEX review_reports_by_reporter ON review_reports (reporter)",
    "CREATE INDEX replicas_by_owner ON replicas (owner)",
]

MIGRATIONS: list[tuple[int, str, list[Statement]]] = [
    (
        1,
        "catalog, stock, reservations, idempotency keys, outbox",
        [
            """
            CREATE TABLE products (
                id TEXT PRIMARY KEY,
                sku TEXT NOT NULL UNIQUE,
                name TEXT {bytewise} NOT NULL,
                description TEXT NOT NULL DEFAULT '',
                category TEXT NOT NULL DEFAULT '',
                price_units BIGINT NOT NULL CHECK (price_units >= 0),
                status TEXT NOT NULL CHECK (status IN ('active', 'preorder', 'discontinued')),
                attributes TEXT NOT NULL DEFAULT '{{}}',
                low_stock_threshold INTEGER NOT NULL DEFAULT 5 CHECK (low_stock_threshold >= 0),
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                version BIGINT NOT NULL DEFAULT 1
            )
            """,
            "CREATE INDEX products_by_name ON products (name, id)",
            "CREATE INDEX products_by_price ON products (price_units, id)",
            "CREATE INDEX products_by_created ON products (created_at, id)",
            "CREATE INDEX products_by_category ON products (category)",
            """
            CREATE TABLE warehouses (
                id TEXT PRIMARY KEY,
                region TEXT NOT NULL,
                name TEXT NOT NULL
            )
            """,
            "CREATE INDEX warehouses_by_region ON warehouses (region)",
            """
            CREATE TABLE stock (
                product_id TEXT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
                warehouse_id TEXT NOT NULL REFERENCES warehouses (id),
                on_hand BIGINT NOT NULL CHECK (on_hand >= 0),
                reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= on_hand),
                version BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (product_id, warehouse_id)
            )
            """,
            """
            CREATE TABLE reservations (
                id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                status TEXT NOT NULL
                    CHECK (status IN ('pending', 'committed', 'released', 'expired')),
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL
            )
            """,
            "CREATE INDEX reservations_pending_by_expiry ON reservations (expires_at)"
            " WHERE status = 'pending'",
            """
            CREATE TABLE reservation_lines (
                reservation_id TEXT NOT NULL REFERENCES reservations (id) ON DELETE CASCADE,
                line_no INTEGER NOT NULL,
                product_id TEXT NOT NULL,
                warehouse_id TEXT NOT NULL,
                quantity BIGINT NOT NULL CHECK (quantity > 0),
                PRIMARY KEY (reservation_id, line_no)
            )
            """,
            "CREATE INDEX reservation_lines_by_product ON reservation_lines (product_id)",
            """
            CREATE TABLE idempotency_keys (
                owner TEXT NOT NULL,
                key TEXT NOT NULL,
                request_hash TEXT NOT NULL,
                status INTEGER NOT NULL,
                body TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (owner, key)
            )
            """,
            "CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at)",
            """
            CREATE TABLE outbox (
                seq {seq_pk},
                product_id TEXT NOT NULL,
                warehouse_id TEXT NOT NULL,
                payload TEXT NOT NULL,
                created_at BIGINT NOT NULL
            )
            """,
        ],
    ),
    (
        2,
        "PostgreSQL: reservations in batches, one server-side call per transaction",
        [("postgres", sql) for sql in pg_reserve.MIGRATION],
    ),
    (
        3,
        "carts, their mutation ids, replica owners, users' event versions; outbox entries name their stream",
        [
            """
            CREATE TABLE carts (
                id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                region TEXT NOT NULL,
                state {blob} NOT NULL,
                context TEXT NOT NULL DEFAULT '{{}}',
                version BIGINT NOT NULL,
                closed_at BIGINT,
                reservation_id TEXT,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL
            )
            """,
            "CREATE INDEX carts_by_owner ON carts (owner, updated_at)",
            """
            CREATE TABLE cart_mutations (
                cart_id TEXT NOT NULL REFERENCES carts (id) ON DELETE CASCADE,
                mutation_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (cart_id, mutation_id)
            )
            """,
            "CREATE INDEX cart_mutations_by_age ON cart_mutations (created_at)",
            """
            CREATE TABLE replicas (
                replica_id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                created_at BIGINT NOT NULL
            )
            """,
            """
            CREATE TABLE user_events (
                sub TEXT PRIMARY KEY,
                version BIGINT NOT NULL
            )
            """,
            # Entries written before this migration, and by PostgreSQL's batched reservations (migration
            # 2's functions), leave these empty: they are stock changes, read back as such
            # (storage.sql_outbox).
            "ALTER TABLE outbox ADD COLUMN stream TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE outbox ADD COLUMN dedupe_key TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE outbox ADD COLUMN version BIGINT NOT NULL DEFAULT 0",
            *(("postgres", sql) for sql in pg_reserve.MIGRATION_3),
        ],
    ),
    (
        4,
        "reviews, their mutation ids, helpful votes and reports; products' rating aggregates; search",
        [
            """
            CREATE TABLE reviews (
                id TEXT PRIMARY KEY,
                product_id TEXT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
                author TEXT NOT NULL,
                region TEXT NOT NULL,
                state {blob} NOT NULL,
                version BIGINT NOT NULL,
                status TEXT NOT NULL CHECK (status IN
                    ('pending', 'published', 'flagged', 'rejected', 'deleted', 'erased')),
                reasons TEXT NOT NULL DEFAULT '[]',
                mod_seq BIGINT NOT NULL DEFAULT 0,
                rating INTEGER NOT NULL DEFAULT 0 CHECK (rating >= 0 AND rating <= 5),
                body TEXT,
                body_hash TEXT,
                media TEXT NOT NULL DEFAULT '[]',
                has_media INTEGER NOT NULL DEFAULT 0,
                helpful BIGINT NOT NULL DEFAULT 0 CHECK (helpful >= 0),
                reports BIGINT NOT NULL DEFAULT 0 CHECK (reports >= 0),
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL
            )
            """,
            # One live review per product and author; a deleted or erased one no longer counts.
            "CREATE UNIQUE INDEX reviews_one_per_author ON reviews (product_id, author)"
            " WHERE status NOT IN ('deleted', 'erased')",
            "CREATE INDEX reviews_by_newest ON reviews (product_id, status, created_at, id)",
            # (rating 0: none yet, never published)
            "CREATE INDEX reviews_by_rating ON reviews (product_id, status, rating, created_at, id)",
            "CREATE INDEX reviews_by_lowest ON reviews"
            " (product_id, status, rating, created_at DESC, id DESC)",
            "CREATE INDEX reviews_by_helpful ON reviews (product_id, status, helpful, created_at, id)",
            "CREATE INDEX reviews_by_status ON reviews (status, updated_at, id)",
            "CREATE INDEX reviews_by_author ON reviews (author, created_at)",
            "CREATE INDEX reviews_by_body_hash ON reviews (body_hash)",
            """
            CREATE TABLE review_mutations (
                review_id TEXT NOT NULL REFERENCES reviews (id) ON DELETE CASCADE,
                mutation_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (review_id, mutation_id)
            )
            """,
            "CREATE INDEX review_mutations_by_age ON review_mutations (created_at)",
            """
            CREATE TABLE review_votes (
                review_id TEXT NOT NULL REFERENCES reviews (id) ON DELETE CASCADE,
                voter TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (review_id, voter)
            )
            """,
            """
            CREATE TABLE review_reports (
                review_id TEXT NOT NULL REFERENCES reviews (id) ON DELETE CASCADE,
                reporter TEXT NOT NULL,
                reason TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (review_id, reporter)
            )
            """,
            # The aggregate of the product's published reviews, changed by increments in the transaction
            # that changes a review's status or rating; rating_score is the average × 10,000 (an integer
            # both backends sort alike), rating_version numbers its changes for the event stream.
            "ALTER TABLE products ADD COLUMN rating_count BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE products ADD COLUMN rating_total BIGINT NOT NULL DEFAULT 0",
            *(f"ALTER TABLE products ADD COLUMN rating_{n} BIGINT NOT NULL DEFAULT 0" for n in range(1, 6)),
            "ALTER TABLE products ADD COLUMN rating_score BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE products ADD COLUMN rating_version BIGINT NOT NULL DEFAULT 0",
            "CREATE INDEX products_by_rating ON products (rating_score, id)",
            # Full-text search of review texts: one contract, each database's own index (no stemming
            # on either; docs/api.md says where their word splitting differs).
            (
                "sqlite",
                # (rowid: a 64-bit hash of the review id, so that an entry is found without a scan; a
                # review's implicit rowid is not stable across VACUUM)
                "CREATE VIRTUAL TABLE review_search USING fts5("
                "review_id UNINDEXED, body, tokenize = 'unicode61 remove_diacritics 2')",
            ),
            (
                "postgres",
                "CREATE INDEX reviews_search ON reviews"
                " USING GIN (to_tsvector('simple', coalesce(body, '')))",
            ),
        ],
    ),
    (
        5,
        "reviews: the lowest-first listing along its own index",
        [
            # Lowest rating first, newest first among equals: one direction along (-rating, created_at,
            # id), so that a deep page's cursor starts the index scan.
            "DROP INDEX reviews_by_lowest",
            "CREATE INDEX reviews_by_lowest ON reviews (product_id, status, (-rating), created_at, id)",
        ],
    ),
    (
        6,
        "real-time tickets used (each once, on any node)",
        [
            """
            CREATE TABLE realtime_tickets (
                jti TEXT PRIMARY KEY,
                expires_at BIGINT NOT NULL
            )
            """,
            "CREATE INDEX realtime_tickets_by_expiry ON realtime_tickets (expires_at)",
        ],
    ),
    (
        7,
        "API keys of partner systems (storage/api_keys.py): only the SHA-256 of a key is kept",
        [
            """
            CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                family_id TEXT NOT NULL,
                name TEXT NOT NULL,
                owner TEXT NOT NULL,
                scopes TEXT NOT NULL,
                secret_hash TEXT NOT NULL,
                prefix TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT,
                revoked_at BIGINT,
                last_used_at BIGINT,
                rotated_from TEXT UNIQUE REFERENCES api_keys (id),
                overlap_ends_at BIGINT
            )
            """,
            "CREATE INDEX api_keys_by_created ON api_keys (created_at, id)",
        ],
    ),
    (
        8,
        "audit log (append-only), user profiles (email and phone encrypted by the hub); owner indexes"
        " for a user's export and erasure",
        MIGRATION_8,
    ),
    (
        9,
        "reservation caps (storage/reservation_caps.py): an owner's pending reservations found by owner",
        [
            "CREATE INDEX reservations_pending_by_owner ON reservations (owner) WHERE status = 'pending'",
            *(("postgres", sql) for sql in pg_reserve.MIGRATION_9),
        ],
    ),
    (
        10,
        "webhooks (storage/webhooks.py): endpoints, their stream positions and leases, their queue with its"
        " dead letters, the delivery log",
        webhooks_schema.MIGRATION_10,
    ),
    (
        11,
        "schools, their assets, parts requests, their lines and backorder queue (storage/parts.py);"
        " PostgreSQL: a GIN index on products' attributes as jsonb",
        MIGRATION_11,
    ),
    (
        12,
        "behaviour events, consent to personalization, and the recommendations' aggregates (co-viewed and"
        " co-carted products, users' preferred attributes, trending per region: storage/behaviour.py)",
        MIGRATION_12,
    ),
    (
        13,
        "reviews' rating moves (storage/rating_folds.py): on PostgreSQL a review's transaction appends its"
        " move of the product's aggregate here instead of locking the product's row; folded in after commit",
        [
            # A product's aggregate is its products row plus the moves not folded in yet: both change
            # in the transaction that changes a review, so every read of the two together is exact.
            """
            CREATE TABLE rating_moves (
                seq {seq_pk},
                product_id TEXT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
                region TEXT NOT NULL,
                rating_count BIGINT NOT NULL,
                rating_total BIGINT NOT NULL,
                rating_1 BIGINT NOT NULL,
                rating_2 BIGINT NOT NULL,
                rating_3 BIGINT NOT NULL,
                rating_4 BIGINT NOT NULL,
                rating_5 BIGINT NOT NULL,
                created_at BIGINT NOT NULL
            )
            """,
            "CREATE INDEX rating_moves_by_product ON rating_moves (product_id, region)",
        ],
    ),
    (
        14,
        "webhook secret rotation: the replaced secret and until when it signs too",
        [
            # the hub's ciphertext (hub/pii.py), as secret_ciphertext's
            "ALTER TABLE webhook_endpoints ADD COLUMN previous_secret_ciphertext TEXT",
            "ALTER TABLE webhook_endpoints ADD COLUMN previous_secret_until BIGINT",
        ],
    ),
    (
        15,
        "carts: the context column goes (the state's bytes hold the context; nothing read the column,"
        " and pushes stopped writing it)",
        ["ALTER TABLE carts DROP COLUMN context"],
    ),
]


def statements_for(dialect: str, statements: list[Statement]) -> list[str]:
    tokens = DIALECT_TOKENS[dialect]
    chosen = []
    for statement in statements:
        if isinstance(statement, tuple):
            only, sql = statement
            if only == dialect:
                chosen.append(sql)
        else:
            chosen.append(statement.format(**tokens))
    return chosen
