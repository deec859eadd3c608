"""The broker streams outbox entries are written for: the naming every node shares.

:mod:`sync.channels` builds its channels on these names; the store writes an entry's stream into the
outbox with the entry, so the relay publishes it without knowing what it carries.

    inventory.{region}     a region's stock changes
    user.{region}.{n}      the private events (carts, reservations, reviews' status) of the users
                           hashed to shard n
    reviews.{region}       published reviews' changes and products' rating aggregates
"""

from __future__ import annotations

import zlib

# The same on every node of a region and never changed while streams hold events: a user's events
# would move to another stream, and their positions with them.
USER_STREAM_SHARDS = 8


def inventory_stream(region: str) -> str:
    return f"inventory.{region}"


def reviews_stream(region: str) -> str:
    return f"reviews.{region}"


def user_stream(region: str, sub: str) -> str:
    """The stream of ``sub``'s private events in ``region``: all of one user's events in one order."""
    return f"user.{region}.{zlib.crc32(sub.encode()) % USER_STREAM_SHARDS}"


def user_streams(region: str) -> list[str]:
    return [f"user.{region}.{n}" for n in range(USER_STREAM_SHARDS)]
