"""The media store seam: where uploaded files and their records live.

Implementations: ``hub/media_store_local.py`` (a directory, the default) and
``hub/media_store_s3.py`` (an S3-compatible bucket). ``tests/test_media.py`` runs one contract test
against both. A record lives with its bytes, in the store — there is no database table.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from hub.settings import Settings


class MediaStoreError(Exception):
    """The store could not be reached or refused an operation; nothing is known to have changed."""


@dataclass(frozen=True, slots=True)
class MediaRecord:
    id: str  # a UUID, made by the hub: never a name a client chose
    owner: str  # the uploader's token subject
    content_type: str  # sniffed from the bytes, one of media_files.ALLOWED_TYPES
    size: int  # bytes stored (after metadata stripping)
    sha256: str  # hex SHA-256 of the bytes stored
    created_at: int  # epoch microseconds

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> MediaRecord:
        try:
            fields: Any = orjson.loads(raw)
            record = cls(**fields)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise MediaStoreError(f"a media record does not decode: {exc}") from exc
        types = {"id": str, "owner": str, "content_type": str, "size": int, "sha256": str, "created_at": int}
        if any(type(getattr(record, name)) is not kind for name, kind in types.items()):
            raise MediaStoreError("a media record has a field of the wrong type")
        return record


def owner_tag(owner: str) -> str:
    """The owner index's name for ``owner``: 32 hex digits of its SHA-256 — a subject may hold any
    character (and is personal data), so it never names a file or an object key itself."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


def indexed_under(record: MediaRecord | None, owner: str | None) -> set[str]:
    """The owners whose index entries a ``delete`` clears: the record's, and the one the caller names."""
    owners = {owner} if owner is not None else set()
    return owners | {record.owner} if record is not None else owners


def canonical_id(media_id: str) -> str | None:
    """``media_id`` if it is a UUID in its canonical form, else None: what stores build names from."""
    try:
        return media_id if str(uuid.UUID(media_id)) == media_id else None
    except (ValueError, TypeError):
        return None


class MediaStore(Protocol):
    """Uploaded files by id, each with its :class:`MediaRecord`.

    Guarantees:

    - ``put(record, data)`` stores ``data`` under ``record.id``, then the record: once ``get`` returns
      the record, ``read`` returns exactly ``data`` (``record.sha256`` is its hash, which the caller
      computed; the S3 store signs it, for the server to check). When ``put`` returns, both are
      durable (local: fsynced; S3: acknowledged). A ``put`` that fails may leave bytes with no
      record: ``get`` does not see them, so callers look the record up before reading. Putting an id
      again replaces it.
    - A reader never sees a partial file or record: each is written whole, then made visible at once
      (local: rename over; S3: a PUT is atomic).
    - ``get`` and ``read`` return None for an id that was never put, and for one that is not a
      canonical UUID (no name is ever built from anything else).
    - ``owned_by(owner)`` lists the ids put with ``record.owner == owner`` (an index entry written
      before the record, named by :func:`owner_tag`, never by the owner itself): every id whose
      record ``get`` returns is listed; an id whose put failed may be listed too (``delete`` clears it).
    - ``delete(id)`` removes the record first — from then on ``get`` and ``read`` return None — then
      the bytes and the index entry; it is idempotent (again, or for an id never put: False), and
      a ``delete`` that failed part-way is finished by running it again.
    - Files and records are never changed or deleted by the store itself, only by ``put`` and
      ``delete``.
    - Failures of the backend raise :class:`MediaStoreError`.
    """

    async def put(self, record: MediaRecord, data: bytes) -> None: ...

    async def get(self, media_id: str) -> MediaRecord | None: ...

    async def read(self, media_id: str) -> bytes | None: ...

    async def owned_by(self, owner: str) -> list[str]: ...

    async def delete(self, media_id: str, owner: str | None = None) -> bool:
        """Remove the media; True if its record was there. ``owner``: whose index entry to clear
        when the record is gone already (a delete cut short, a put that failed before its record)."""
        ...

    async def close(self) -> None: ...


def open_media_store(settings: Settings) -> MediaStore:
    """The S3 store when a bucket is configured (its endpoint and keys are then required), else the
    local directory."""
    if settings.media_s3_bucket:
        missing = [
            flag
            for flag, value in (
                ("--media-s3-endpoint", settings.media_s3_endpoint),
                ("--media-s3-access-key", settings.media_s3_access_key),
                ("--media-s3-secret-key", settings.media_s3_secret_key),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"an S3 media bucket needs {', '.join(missing)}")
        from hub.media_store_s3 import S3MediaStore

        return S3MediaStore(
            settings.media_s3_endpoint or "",
            settings.media_s3_bucket,
            settings.media_s3_access_key or "",
            settings.media_s3_secret_key or "",
            settings.media_s3_region,
        )
    from hub.media_store_local import LocalMediaStore

    return LocalMediaStore(settings.media_dir)
