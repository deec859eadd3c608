"""Standard Webhooks signatures (https://www.standardwebhooks.com/, "Signature scheme").

Every request carries ``webhook-id`` (the message id: the same on every attempt and replay of one
message), ``webhook-timestamp`` (the attempt's time, integer seconds) and ``webhook-signature``:
``v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``, where the key is the secret's bytes —
the secret is shown to its owner as ``whsec_<base64 key>``. A receiver recomputes the HMAC over the body
exactly as received, compares in constant time and refuses timestamps far from its clock (replays).

Written here rather than taken from the spec's ``standardwebhooks`` package: it is a dozen lines of
``hmac``, the package's ``sign`` wants a ``datetime`` per call, and the tests verify every delivery
with that package on the receiving side — two implementations checked against each other, not one
against itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

SECRET_PREFIX = "whsec_"  # noqa: S105 (the spec's prefix, not a secret)
SECRET_BYTES = 32  # the spec asks for 24 to 64 random bytes


def new_secret() -> str:
    """A fresh ``whsec_…`` secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret; ValueError if it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret begins with whsec_")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is whsec_ and base64") from exc
    if not 24 <= len(key) <= 64:
        raise ValueError("a webhook secret's key is 24 to 64 bytes")
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``."""
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(keys: Sequence[bytes], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt, signed with each key: while a rotated secret still signs, the
    signatures are space-delimited, the current secret's first (the spec's way to rotate: a receiver
    accepts a request one of whose signatures it verifies)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(key, message_id, timestamp, body) for key in keys),
        "Content-Type": "application/json",
    }


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """An endpoint's secret, and the one a rotation replaced until ``previous_until`` (µs)."""

    current: bytes
    previous: bytes | None = None
    previous_until: int | None = None

    def at(self, now_us: int) -> tuple[bytes, ...]:
        """The keys that sign an attempt made at ``now_us``."""
        if self.previous is not None and self.previous_until is not None and now_us < self.previous_until:
            return (self.current, self.previous)
        return (self.current,)
