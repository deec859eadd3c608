"""Exceptions raised by every Store implementation.

    StoreError
    ├── NotFound             the product / warehouse / reservation does not exist
    ├── Conflict             a uniqueness rule would be broken (duplicate sku, warehouse id)
    ├── VersionMismatch      optimistic concurrency: the caller's expected version is stale
    ├── InsufficientStock    a reservation or adjustment would make available stock negative
    ├── InvalidTransition    e.g. committing a released reservation
    ├── IdempotencyMismatch  an Idempotency-Key reused with a different request body
    └── StoreUnavailable     the database cannot be reached

Each carries a stable ``code`` that the HTTP layer maps to a problem+json response.
"""

from __future__ import annotations

from typing import Any


class StoreError(Exception):
    code = "store_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(StoreError):
    code = "not_found"


class Conflict(StoreError):
    code = "conflict"


class VersionMismatch(StoreError):
    code = "version_mismatch"


class InsufficientStock(StoreError):
    code = "insufficient_stock"


class InvalidTransition(StoreError):
    code = "invalid_transition"


class IdempotencyMismatch(StoreError):
    code = "idempotency_key_reused"


class StoreUnavailable(StoreError):
    code = "store_unavailable"
