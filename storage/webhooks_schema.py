"""Migration 10: webhook endpoints, their stream positions and leases, their queue (with its dead letters)
and the delivery log (:mod:`storage.webhooks` states what they hold and guarantee).

Written in :mod:`storage.migrations`' portable SQL (``{seq_pk}``: an auto-incrementing key). No foreign
keys: a worker may log an attempt of an endpoint deleted a moment before (the purge forgets it), and
deleting an endpoint deletes its rows itself. Booleans are integers 0/1 on both databases.
"""

from __future__ import annotations

MIGRATION_10: list[str | tuple[str, str]] = [
    # subscriptions: JSON [{"type": "stock.changed", "filters": {"sku": ["A-1"]}}, …]; secret_ciphertext:
    # the hub's AES-GCM ciphertext of the signing secret (hub/pii.py), never the secret.
    """
    CREATE TABLE webhook_endpoints (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        owner_is_admin INTEGER NOT NULL DEFAULT 0,
        url TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        subscriptions TEXT NOT NULL,
        secret_ciphertext TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1,
        disabled_reason TEXT,
        disabled_at BIGINT,
        failing_since BIGINT,
        dead_letters BIGINT NOT NULL DEFAULT 0,
        version BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )
    """,
    "CREATE INDEX webhook_endpoints_by_owner ON webhook_endpoints (owner, created_at, id)",
    "CREATE INDEX webhook_endpoints_by_created ON webhook_endpoints (created_at, id)",
    # Up to where each stream's events were taken into the endpoint's queue (a broker Position).
    """
    CREATE TABLE webhook_positions (
        endpoint_id TEXT NOT NULL,
        stream TEXT NOT NULL,
        epoch TEXT NOT NULL,
        position_offset BIGINT NOT NULL,
        PRIMARY KEY (endpoint_id, stream)
    )
    """,
    # The node delivering an endpoint's events of a region, until expires_at.
    """
    CREATE TABLE webhook_leases (
        endpoint_id TEXT NOT NULL,
        region TEXT NOT NULL,
        holder TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (endpoint_id, region)
    )
    """,
    # The queue: one row per message and endpoint. head = 1 on the oldest pending message of its
    # (endpoint, region, order_key), the only one of the key that may be attempted (in order per key).
    """
    CREATE TABLE webhook_deliveries (
        seq {seq_pk},
        endpoint_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        region TEXT NOT NULL,
        order_key TEXT NOT NULL,
        event_type TEXT NOT NULL,
        event_at BIGINT NOT NULL,
        payload TEXT NOT NULL,
        stream TEXT NOT NULL DEFAULT '',
        epoch TEXT NOT NULL DEFAULT '',
        position_offset BIGINT NOT NULL DEFAULT 0,
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
        head INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL,
        queued_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        last_error TEXT,
        UNIQUE (endpoint_id, message_id)
    )
    """,
    # What is due: the heads, by due time (the worker's every poll).
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, region, next_attempt_at)"
    " WHERE status = 'pending' AND head = 1",
    # A key's oldest pending message (the next head), and whether a key has one.
    "CREATE INDEX webhook_deliveries_by_key ON webhook_deliveries (endpoint_id, region, order_key, seq)"
    " WHERE status = 'pending'",
    "CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (endpoint_id, seq) WHERE status = 'dead'",
    # Replays: from a time, from a stream position.
    "CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (endpoint_id, event_at)",
    "CREATE INDEX webhook_deliveries_by_position ON webhook_deliveries"
    " (endpoint_id, stream, epoch, position_offset)",
    "CREATE INDEX webhook_deliveries_by_age ON webhook_deliveries (updated_at)",
    # The delivery log: every attempt.
    """
    CREATE TABLE webhook_attempts (
        seq {seq_pk},
        endpoint_id TEXT NOT NULL,
        delivery_seq BIGINT NOT NULL,
        message_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        at BIGINT NOT NULL,
        status_code INTEGER,
        latency_us BIGINT NOT NULL,
        error TEXT,
        outcome TEXT NOT NULL CHECK (outcome IN ('delivered', 'retry', 'dead'))
    )
    """,
    "CREATE INDEX webhook_attempts_by_endpoint ON webhook_attempts (endpoint_id, seq)",
    "CREATE INDEX webhook_attempts_by_message ON webhook_attempts (endpoint_id, message_id, seq)",
    "CREATE INDEX webhook_attempts_by_age ON webhook_attempts (at)",
]
