"""API keys for partner systems: the key format, and turning a presented key into a caller.

**Format.** ``shk_<id>_<secret>_<checksum>``: the fixed prefix ``shk_`` (a scanner finds leaked keys by
it), the key's id (16 letters and digits: the row it names, shown in listings), a 32-character random
secret (190 bits) and a 6-character base62 CRC32 of everything before it, like GitHub's tokens: a key
mistyped or cut short is refused (401 ``invalid_api_key``) without reading the database. A key is sent as
a bearer token (``Authorization: Bearer shk_…``) on every transport; it is shown once, when made, and
only its SHA-256 is stored, compared in constant time.

**Who a key is.** A :class:`~hub.auth.Principal` whose ``sub`` is ``apikey.<family id>`` — the id of
the first key of its rotation chain, so that a rotated key still owns the reservations and follows the
``user:`` channel its predecessor did (a ``.``, not a ``:``, which channel names keep for themselves) —
with **no role** and the key's scopes. Roles are for people's
tokens: a key reaches only the routes the authorization table (hub/authz.py) opens to one of its scopes,
plus the public ones, and object checks treat it as an ordinary user of its own (no ``service`` or
``admin`` reach over other users' carts, channels or reservations). The principal's ``expires_at`` is
the key's expiry or the end of its rotation overlap, else an hour from when it was read: a live
connection opened with a key presents it again at least hourly.

**Revocation and the cache.** A node keeps each key it has read for ``api_key_cache_seconds`` (2 s):
a revocation or rotation takes effect at once on the node that made it (it forgets its copy) and within
that time on every other node. Concurrent first uses of a key share one read (single-flight).
``last_used_at`` is written in the background, at most once a minute per key and node, and not at all
when the stored time is less than a minute old: not a write per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import re
import secrets
import string
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from hub.auth import Principal
from hub.errors import Unauthenticated
from hub.keys import API_KEYS, SETTINGS, STORE
from storage.api_keys import ApiKey, ApiKeyState
from storage.base import Store

log = logging.getLogger(__name__)

PREFIX = "shk_"
ID_LENGTH = 16
SECRET_LENGTH = 32
CHECKSUM_LENGTH = 6
_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_ID = re.compile(f"[0-9A-Za-z]{{{ID_LENGTH}}}")
_KEY = re.compile(
    f"{PREFIX}([0-9A-Za-z]{{{ID_LENGTH}}})_[0-9A-Za-z]{{{SECRET_LENGTH}}}_([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})"
)
TOUCH_INTERVAL_SECONDS = 60  # last_used_at: at most one write a minute per key
LIVE_CONNECTION_SECONDS = 3600  # a key with no end of its own is presented again at least this often
_MAX_ENTRIES = 10_000


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def checksum(body: str) -> str:
    """The base62 CRC32 of a key's first part (62^6 > 2^32: every CRC has its own 6 characters)."""
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def new_key_id() -> str:
    return _random(ID_LENGTH)


def mint(key_id: str) -> str:
    """A new key for ``key_id``: a fresh secret and its checksum."""
    body = f"{PREFIX}{key_id}_{_random(SECRET_LENGTH)}"
    return f"{body}_{checksum(body)}"


def display_prefix(key_id: str) -> str:
    """What listings show of a key: enough to tell which one it is, nothing of its secret."""
    return f"{PREFIX}{key_id}"


def secret_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def is_api_key(token: str) -> bool:
    return token.startswith(PREFIX)


def parse(key: str) -> str:
    """The id a well-formed key names; 401 ``invalid_api_key`` for anything else (no database read)."""
    match = _KEY.fullmatch(key)
    if match is None or not hmac.compare_digest(match.group(2), checksum(key[: -CHECKSUM_LENGTH - 1])):
        raise _invalid()
    return match.group(1)


def _invalid() -> Unauthenticated:
    return Unauthenticated("the API key is not valid", code="invalid_api_key")


@dataclass(frozen=True, slots=True)
class _Entry:
    key: ApiKey | None  # None: no such key
    fresh_until: float  # monotonic
    principal: Principal | None


def subject(key: ApiKey) -> str:
    """Who the key acts as: one subject for a key and every key its rotations made."""
    return f"apikey.{key.family_id}"


def principal_of(key: ApiKey, now: float) -> Principal:
    ends = key.usable_until
    expires = ends // 1_000_000 if ends is not None else int(now) + LIVE_CONNECTION_SECONDS
    return Principal(
        sub=subject(key),
        roles=frozenset(),
        expires_at=expires,
        scopes=frozenset(key.scopes),
        api_key_id=key.id,
    )


class ApiKeys:
    """A node's keys as last read, and the keys' ``last_used_at`` writes."""

    def __init__(
        self, store: Store, cache_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._ttl = cache_seconds
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._flights: dict[str, asyncio.Future[_Entry]] = {}
        self._epoch = 0  # moved by forget(): a read begun before it is not kept
        self._touched: dict[str, float] = {}  # key id → when this node last wrote its last_used_at
        self._writes: set[asyncio.Task[None]] = set()

    async def authenticate(self, key: str) -> Principal:
        key_id = parse(key)
        entry = await self._entry(key_id)
        record = entry.key
        if record is None or not hmac.compare_digest(secret_hash(key), record.secret_hash):
            raise _invalid()
        now_us = time.time_ns() // 1000
        state = record.state(now_us)
        if state is ApiKeyState.REVOKED:
            raise Unauthenticated("the API key was revoked", code="api_key_revoked")
        if state is ApiKeyState.ROTATED:
            raise Unauthenticated(
                "the API key was rotated and its overlap has ended: use the new key", code="api_key_rotated"
            )
        if state is ApiKeyState.EXPIRED:
            raise Unauthenticated("the API key has expired", code="api_key_expired")
        self._touch(record, now_us)
        assert entry.principal is not None
        return entry.principal

    def forget(self, key_id: str) -> None:
        """Drop this node's copy of a key (it was just revoked or rotated here): the next use reads it."""
        self._epoch += 1
        self._entries.pop(key_id, None)
        self._flights.pop(key_id, None)

    async def _entry(self, key_id: str) -> _Entry:
        entry = self._entries.get(key_id)
        if entry is not None and self._clock() < entry.fresh_until:
            return entry
        flight = self._flights.get(key_id)
        if flight is None:
            flight = asyncio.ensure_future(self._read(key_id, self._epoch))
            self._flights[key_id] = flight

            def landed(done: asyncio.Future[_Entry], key_id: str = key_id) -> None:
                if self._flights.get(key_id) is done:
                    del self._flights[key_id]

            flight.add_done_callback(landed)
        return await asyncio.shield(flight)

    async def _read(self, key_id: str, epoch: int) -> _Entry:
        key = await self._store.get_api_key(key_id)
        principal = principal_of(key, time.time()) if key is not None else None
        entry = _Entry(key, self._clock() + self._ttl, principal)
        if epoch == self._epoch:  # not forgotten while it was read
            if len(self._entries) >= _MAX_ENTRIES:
                for old in list(itertools.islice(self._entries, _MAX_ENTRIES // 2)):
                    del self._entries[old]
            self._entries[key_id] = entry
        return entry

    def _touch(self, key: ApiKey, now_us: int) -> None:
        interval_us = TOUCH_INTERVAL_SECONDS * 1_000_000
        if key.last_used_at is not None and now_us - key.last_used_at < interval_us:
            return
        last = self._touched.get(key.id)
        mono = self._clock()
        if last is not None and mono - last < TOUCH_INTERVAL_SECONDS:
            return
        if len(self._touched) >= _MAX_ENTRIES:
            self._touched = {k: t for k, t in self._touched.items() if mono - t < TOUCH_INTERVAL_SECONDS}
        self._touched[key.id] = mono
        task = asyncio.create_task(self._write_touch(key.id, now_us, interval_us), name="api-key-touch")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_touch(self, key_id: str, now_us: int, interval_us: int) -> None:
        try:
            await self._store.touch_api_key(key_id, now_us, interval_us)
        except Exception as exc:  # a lost last_used_at is not worth failing anything for
            log.warning("could not record the use of API key %s: %s", key_id, exc)
            self._touched.pop(key_id, None)

    async def close(self) -> None:
        """Let the pending ``last_used_at`` writes finish (a few seconds at most)."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=5.0)
        for task in list(self._writes):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def authenticate_api_key(app: web.Application, key: str) -> Principal:
    keys = app.get(API_KEYS)
    if keys is None:  # an app not started by create_app's contexts
        parse(key)
        raise Unauthenticated("this hub serves no API keys yet", code="invalid_api_key")
    return await keys.authenticate(key)


async def api_keys_context(app: web.Application) -> AsyncIterator[None]:
    """The node's keys cache, from the store's start to before its close."""
    keys = ApiKeys(app[STORE], app[SETTINGS].api_key_cache_seconds)
    app[API_KEYS] = keys
    try:
        yield
    finally:
        await keys.close()
