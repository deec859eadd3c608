"""The broker streams outbox entries are written for: the naming every node shares.

:mod:`sync.channels` builds its channels on these names; the store writes an entry's stream into the
outbox with the entry, so the relay publishes it without knowing what it carries.

    inventory.{region}     a region's stock changes
    user.{region}.{n}      the private events (carts, reservations, reviews' status) of the users
                           hashed to shard n
    reviews.{region}       published reviews' changes and products' rating aggregates
    parts.{region}.{n}     the parts requests' status changes of the schools hashed to shard n
"""

from __future__ import annotations

import zlib

# The same on every node of a region and never changed while streams hold events: a user's events
# would move to another stream, and their positions with them.
USER_STREAM_SHARDS = 8
# Schools are fewer than users: four shards a region (the same rule: never changed while streams hold events).
PARTS_STREAM_SHARDS = 4


def inventory_stream(region: str) -> str:
    return f"inventory.{region}"


def reviews_stream(region: str) -> str:
    return f"reviews.{region}"


def user_stream(region: str, sub: str) -> str:
    """The stream of ``sub``'s private events in ``region``: all of one user's events in one order."""
    return f"user.{region}.{zlib.crc32(sub.encode()) % USER_STREAM_SHARDS}"


def user_streams(region: str) -> list[str]:
    return [f"user.{region}.{n}" for n in range(USER_STREAM_SHARDS)]


def parts_stream(region: str, school_id: str) -> str:
    """The stream of ``school_id``'s parts requests' events in ``region`` (the school's): one order per
    school."""
    return f"parts.{region}.{zlib.crc32(school_id.encode()) % PARTS_STREAM_SHARDS}"


def parts_streams(region: str) -> list[str]:
    return [f"parts.{region}.{n}" for n in range(PARTS_STREAM_SHARDS)]
