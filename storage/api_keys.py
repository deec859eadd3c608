"""API keys' records: what the store keeps of a partner system's key (hub/api_keys.py makes and checks
the keys themselves; docs/security.md, "API keys").

A key's secret is never stored: only the SHA-256 of the whole key (hex) and its displayed prefix. A key
is revoked by stamping ``revoked_at`` (its row stays, for the listing and for whoever investigates).
A rotation makes a new key (``rotated_from`` names the old one) and gives the old one an
``overlap_ends_at``: it works until then, and both keys act as the same ``family_id``, the id of the
first key of the chain, so that what a partner made with the old key stays its own.

Guarantees of the store's API-key operations:

* A key is rotated at most once: of two concurrent rotations of one key one succeeds, the other is
  :class:`~storage.errors.Conflict` (``api_key_not_rotatable``), as is the rotation of a key that is
  revoked, expired or rotated already.
* ``touch_api_key`` moves ``last_used_at`` only forward and only when it is older than the interval
  given: nodes that see a key used at the same time write it once.

Times are epoch microseconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ApiKeyState(enum.StrEnum):
    ACTIVE = "active"
    ROTATING = "rotating"  # replaced by a rotation; works until overlap_ends_at
    ROTATED = "rotated"  # replaced, and its overlap has ended
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    family_id: str  # the first key of its rotation chain: the subject the key acts as
    name: str
    owner: str  # the admin who created it (or rotated it into being)
    scopes: tuple[str, ...]
    secret_hash: str  # hex SHA-256 of the whole key
    prefix: str  # what listings show of the key
    created_at: int
    expires_at: int | None = None
    revoked_at: int | None = None
    last_used_at: int | None = None
    rotated_from: str | None = None
    overlap_ends_at: int | None = None
    replaced_by: str | None = None  # the key a rotation made of this one (read, never written)

    def state(self, now_us: int) -> ApiKeyState:
        if self.revoked_at is not None:
            return ApiKeyState.REVOKED
        if self.overlap_ends_at is not None and self.overlap_ends_at <= now_us:
            return ApiKeyState.ROTATED
        if self.expires_at is not None and self.expires_at <= now_us:
            return ApiKeyState.EXPIRED
        if self.overlap_ends_at is not None:
            return ApiKeyState.ROTATING
        return ApiKeyState.ACTIVE

    @property
    def usable_until(self) -> int | None:
        """When the key stops working, unless revoked first (None: not by itself)."""
        ends = [t for t in (self.expires_at, self.overlap_ends_at) if t is not None]
        return min(ends) if ends else None


@dataclass(frozen=True, slots=True)
class NewSecret:
    """The key a rotation makes: its own id, secret and creator; the rest (name, scopes, expiry,
    family) is the old key's, read in the rotation's transaction."""

    id: str
    owner: str
    secret_hash: str
    prefix: str
    created_at: int
