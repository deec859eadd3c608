"""Media uploads for reviews: reading an upload, signed URLs, and what the review code calls.

An upload is the file itself as the request body (not multipart), its ``Content-Type`` the type the
client says it is. It is read from the stream with its own cap — the app's ``client_max_size``
bounds only ``request.read()``/``post()``, which are never called here — and judged by its bytes:
empty → 400 ``empty_upload``; bytes of no accepted type → 415 ``unsupported_media_type``; a
``Content-Type`` other than the bytes' type → 415 ``media_type_mismatch``; more than the type's
limit (``media_max_image_bytes``, ``media_max_video_bytes``) → 413 ``media_too_large``, answered as
soon as the limit is passed (or at once from ``Content-Length``) with no more than the limit read
into memory. Images lose their metadata (``hub/media_files.py``); a broken one is 422
``malformed_media``. Nothing is stored unless the whole upload is accepted. The hub never fetches
a URL a client gives.

A stored file is read through a signed URL, ``/api/v1/media/{id}?exp=…&sig=…``: ``sig`` is
base64url(HMAC-SHA256(k, "{id}:{exp}")), k = HMAC-SHA256(jwt_secret, "synchub media url"), so it
needs no token and cannot be made for another id or a later expiry. A wrong or missing signature is
403 ``invalid_signature``; a past ``exp`` is 403 ``url_expired`` (403, not 410: the file is still
there, the URL is what ran out — ask for a fresh one).

For the review code: :func:`media_urls` and :func:`owned_media`; for the privacy code (export and
erasure): :func:`media_of` and :func:`delete_media_of`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import TypeVar

from aiohttp import web

from hub.auth import Principal
from hub.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    ServiceUnavailable,
    Unprocessable,
    UnsupportedMedia,
)
from hub.keys import MEDIA, SETTINGS
from hub.media_files import ALLOWED_TYPES, IMAGE_TYPES, SNIFF_BYTES, MalformedMedia, sniff, strip_metadata
from hub.media_store import MediaRecord, MediaStore, MediaStoreError, open_media_store
from hub.settings import Settings
from hub.validation import refuse_encoded_body

T = TypeVar("T")
_URL_KEY_LABEL = b"synchub media url"


# -- signed URLs ------------------------------------------------------------------------------------


def _url_key(secret: str) -> bytes:
    # Derived, not the JWT secret itself: a media signature is never a valid token MAC, nor the reverse.
    return hmac.new(secret.encode(), _URL_KEY_LABEL, hashlib.sha256).digest()


def sign(secret: str, media_id: str, exp: int) -> str:
    mac = hmac.new(_url_key(secret), f"{media_id}:{exp}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def signed_url(secret: str, media_id: str, ttl_seconds: int, now: float | None = None) -> tuple[str, int]:
    """A path on this hub that serves the media until the returned expiry (epoch seconds)."""
    exp = int(time.time() if now is None else now) + ttl_seconds
    return f"/api/v1/media/{media_id}?exp={exp}&sig={sign(secret, media_id, exp)}", exp


def verify_signature(secret: str, media_id: str, exp: str | None, sig: str | None, now: float) -> int:
    """The URL's expiry if its signature is this hub's and it has not passed; else raises."""
    if exp is None or sig is None or not exp.isascii() or not exp.isdigit() or len(exp) > 12:
        raise Forbidden("a media URL needs exp and sig, as the hub gave them", code="invalid_signature")
    if not hmac.compare_digest(sign(secret, media_id, int(exp)).encode(), sig.encode("utf-8", "replace")):
        raise Forbidden("the media URL's signature is not valid", code="invalid_signature")
    if int(exp) <= now:
        raise Forbidden("the media URL has expired; ask for a fresh one", code="url_expired")
    return int(exp)


# -- uploads ----------------------------------------------------------------------------------------


def limit_for(settings: Settings, content_type: str) -> int:
    return settings.media_max_image_bytes if content_type in IMAGE_TYPES else settings.media_max_video_bytes


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the upload exceeds the limit of {limit} bytes", code="media_too_large", limit=limit
    )


async def read_upload(request: web.Request) -> tuple[str, bytes]:
    """The upload's sniffed type and bytes, checked as the module docstring says."""
    refuse_encoded_body(request)
    settings = request.app[SETTINGS]
    declared = request.content_type
    largest = max(settings.media_max_image_bytes, settings.media_max_video_bytes)
    length = request.content_length
    if length is not None and length > largest:
        raise _too_large(limit_for(settings, declared) if declared in ALLOWED_TYPES else largest)
    body = bytearray()
    while len(body) < SNIFF_BYTES:
        chunk = await request.content.readany()
        if not chunk:
            break
        body += chunk
    if not body:
        raise BadRequest("the upload is empty", code="empty_upload")
    found = sniff(bytes(body[:SNIFF_BYTES]))
    if found is None or found not in ALLOWED_TYPES:
        what = f"{found} is not accepted" if found else "the bytes are of no accepted type"
        raise UnsupportedMedia(
            f"{what}; send one of {', '.join(sorted(ALLOWED_TYPES))}", accepted=sorted(ALLOWED_TYPES)
        )
    if declared != found:
        raise UnsupportedMedia(
            f"the bytes are {found} but the Content-Type says {declared}",
            code="media_type_mismatch",
            detected=found,
            declared=declared,
        )
    limit = limit_for(settings, found)
    if (length is not None and length > limit) or len(body) > limit:
        raise _too_large(limit)
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return found, bytes(body)


def _prepare(content_type: str, data: bytes) -> tuple[bytes, str]:
    try:
        stored = strip_metadata(content_type, data)
    except MalformedMedia as exc:
        raise Unprocessable(str(exc), code="malformed_media") from exc
    return stored, hashlib.sha256(stored).hexdigest()


async def save_upload(app: web.Application, owner: str, content_type: str, data: bytes) -> MediaRecord:
    # Parsing and hashing up to 50 MiB is milliseconds of CPU: done on a thread, off the event loop.
    stored, digest = await asyncio.to_thread(_prepare, content_type, data)
    record = MediaRecord(
        id=str(uuid.uuid4()),
        owner=owner,
        content_type=content_type,
        size=len(stored),
        sha256=digest,
        created_at=time.time_ns() // 1000,
    )
    await _store_call(app[MEDIA].put(record, stored))
    return record


async def _store_call(call: Awaitable[T]) -> T:
    try:
        return await call
    except MediaStoreError as exc:
        raise ServiceUnavailable(
            f"the media store is unavailable: {exc}", code="media_store_unavailable"
        ) from exc


async def load_record(app: web.Application, media_id: str) -> MediaRecord | None:
    return await _store_call(app[MEDIA].get(media_id))


async def load_bytes(app: web.Application, media_id: str) -> bytes | None:
    return await _store_call(app[MEDIA].read(media_id))


def may_see(who: Principal, record: MediaRecord) -> bool:
    """The uploader, moderators and admins see a media's record; for anyone else it does not exist."""
    return record.owner == who.sub or bool(who.roles & {"moderator", "admin"})


# -- for the review code ----------------------------------------------------------------------------


async def media_urls(app: web.Application, ids: Iterable[str]) -> dict[str, str]:
    """A fresh signed URL (``media_url_ttl_seconds``) for each id that names stored media; ids that
    do not are left out. URLs are paths on this hub."""
    wanted = list(dict.fromkeys(ids))
    records = await asyncio.gather(*(load_record(app, media_id) for media_id in wanted))
    settings = app[SETTINGS]
    return {
        record.id: signed_url(settings.jwt_secret, record.id, settings.media_url_ttl_seconds)[0]
        for record in records
        if record is not None
    }


async def owned_media(app: web.Application, owner: str, ids: Iterable[str]) -> list[str]:
    """The ids, in the order given, that do NOT name media uploaded by ``owner`` (missing, not a
    UUID, or someone else's): an empty list means every id is the owner's to attach."""
    wanted = list(dict.fromkeys(ids))
    records = await asyncio.gather(*(load_record(app, media_id) for media_id in wanted))
    return [
        media_id
        for media_id, record in zip(wanted, records, strict=True)
        if record is None or record.owner != owner
    ]


# -- for the privacy code ---------------------------------------------------------------------------


async def media_of(app: web.Application, owner: str, ids: Iterable[str] = ()) -> list[MediaRecord]:
    """The records of ``owner``'s uploads: those its owner index lists, and those of ``ids`` (the
    media their reviews name, which covers uploads made before the index existed) that are theirs."""
    store = app[MEDIA]
    wanted = list(dict.fromkeys([*await _store_call(store.owned_by(owner)), *ids]))
    records = await asyncio.gather(*(load_record(app, media_id) for media_id in wanted))
    return [record for record in records if record is not None and record.owner == owner]


async def delete_media_of(app: web.Application, owner: str, ids: Iterable[str] = ()) -> int:
    """Delete every upload of ``owner`` (:func:`media_of`, then what its index still names: a put or
    delete cut short); returns how many were there. Run again after a failure, it finishes the job."""
    store = app[MEDIA]
    found = await media_of(app, owner, ids)
    deleted = sum(await asyncio.gather(*(_store_call(store.delete(r.id)) for r in found)))
    leftovers = await _store_call(store.owned_by(owner))
    await asyncio.gather(*(_store_call(store.delete(media_id, owner)) for media_id in leftovers))
    return deleted


async def media_context(app: web.Application) -> AsyncIterator[None]:
    """The media store for the app's life: local by default, S3 when a bucket is configured."""
    store: MediaStore = open_media_store(app[SETTINGS])
    app[MEDIA] = store
    yield
    await store.close()
