"""Where the Redis broker keeps a stream, and the move from the layout before.

Layout 2 (now), per stream ``S`` under ``prefix``::

    {prefix}{S}:stream   {prefix}{S}:meta   {prefix}{S}:dedupe

The braces are a Redis Cluster hash tag: the slot of a key is the hash of what is between them, so the
three keys of a stream share a slot (the publish script touches all three at once, which a cluster
allows only within one slot), while different streams spread over the cluster's slots. A stream name
holding a brace (which would end the tag early) is tagged by a digest instead. ``{prefix}broker:layout``
holds ``"2"`` once a broker has checked that no key of the layout before is left.

Layout 1 (before): ``{prefix}stream:S``, ``{prefix}meta:S``, ``{prefix}dedupe:S`` — three slots, so
unusable on a cluster. A broker that finds such keys refuses to start (:class:`LegacyLayout`) rather
than start a second, empty history beside them; :func:`migrate` (``synchub migrate-redis``) renames
them, epoch, offsets and dedupe versions kept, so clients resume where they were. It is idempotent, and
leaves alone a stream that already has layout-2 keys (a hub of this version published to it while an
older one ran): those are reported as conflicts, for the operator to delete one side.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import NamedTuple

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from sync.broker import BrokerError

LAYOUT = "2"
_LEGACY_KINDS = ("stream", "meta", "dedupe")
_GLOB_SPECIAL = frozenset("*?[]\\")

# Renames one stream's three keys from layout 1 to 2, unless the new meta exists (then 0).
# KEYS: old stream, meta, dedupe; new stream, meta, dedupe.
_MIGRATE_LUA = """
if redis.call('EXISTS', KEYS[5]) == 1 then
    return 0
end
for i = 1, 3 do
    if redis.call('EXISTS', KEYS[i]) == 1 then
        redis.call('RENAME', KEYS[i], KEYS[i + 3])
    end
end
return 1
"""

Client = Redis | RedisCluster


class StreamKeys(NamedTuple):
    stream: str
    meta: str
    dedupe: str


class LegacyLayout(BrokerError):
    """Redis holds broker keys of layout 1: run ``synchub migrate-redis`` first."""


def check_prefix(prefix: str) -> None:
    if "{" in prefix or "}" in prefix:
        raise ValueError(
            f"a Redis key prefix may not hold braces (they make the cluster hash tag): {prefix!r}"
        )


def stream_tag(stream: str) -> str:
    """What goes between the braces for ``stream``: the name itself, or a digest if it holds a brace or
    is empty (``{}`` is no tag at all)."""
    if stream and "{" not in stream and "}" not in stream:
        return stream
    return "h" + hashlib.blake2b(stream.encode(), digest_size=16).hexdigest()


def stream_keys(prefix: str, stream: str) -> StreamKeys:
    base = f"{prefix}{{{stream_tag(stream)}}}:"
    return StreamKeys(base + "stream", base + "meta", base + "dedupe")


def legacy_keys(prefix: str, stream: str) -> StreamKeys:
    return StreamKeys(f"{prefix}stream:{stream}", f"{prefix}meta:{stream}", f"{prefix}dedupe:{stream}")


def layout_key(prefix: str) -> str:
    return f"{prefix}broker:layout"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)


async def legacy_streams(client: Client, prefix: str) -> list[str]:
    """The streams that have a key of layout 1 under ``prefix`` (SCAN, on every master of a cluster)."""
    found: set[str] = set()
    for kind in _LEGACY_KINDS:
        head = f"{prefix}{kind}:"
        keys: AsyncIterator[bytes] = client.scan_iter(match=_glob_escape(head) + "*", count=1000)
        async for key in keys:
            found.add(key.decode()[len(head) :])
    return sorted(found)


async def check_layout(client: Client, prefix: str) -> None:
    """Raise :class:`LegacyLayout` if keys of layout 1 are left under ``prefix``; remember a clean check
    (one GET on later starts instead of a SCAN)."""
    if await client.get(layout_key(prefix)) == LAYOUT.encode():
        return
    streams = await legacy_streams(client, prefix)
    if streams:
        shown = ", ".join(streams[:5]) + (", …" if len(streams) > 5 else "")
        raise LegacyLayout(
            f"Redis holds synchub broker keys in the layout before hash tags under {prefix!r} "
            f"({len(streams)} streams: {shown}). Stop every hub of older versions, then run "
            f"`synchub migrate-redis --redis-url URL --redis-prefix {prefix}` once, and start again."
        )
    await client.set(layout_key(prefix), LAYOUT)


@dataclass
class Migration:
    """What :func:`migrate` did (or, with ``dry_run``, would do)."""

    migrated: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # already have layout-2 keys: left alone


async def migrate(client: Client, prefix: str, *, dry_run: bool = False) -> Migration:
    """Rename every stream's layout-1 keys under ``prefix`` to layout 2 (one script per stream, so a
    stream is moved whole or not at all), then mark the layout. Idempotent.

    Layout-1 keys exist only on a single Redis (a cluster refused the publish script that made them),
    so the script's keys in several slots are fine; on a cluster there is nothing to rename.
    """
    check_prefix(prefix)
    result = Migration()
    for stream in await legacy_streams(client, prefix):
        old, new = legacy_keys(prefix, stream), stream_keys(prefix, stream)
        if dry_run:
            taken = await client.exists(new.meta)
            (result.conflicts if taken else result.migrated).append(stream)
            continue
        moved = await client.eval(_MIGRATE_LUA, 6, *old, *new)
        (result.migrated if int(moved) else result.conflicts).append(stream)
    if not dry_run and not result.conflicts:
        await client.set(layout_key(prefix), LAYOUT)
    return result
