"""The media store in a local directory (the default): ``<dir>/<first two hex digits>/<uuid>`` holds
the bytes and ``<uuid>.json`` beside it the record; ``<dir>/owners/<owner tag>/<uuid>``, an empty
file, is the owner index (``owned_by``).

Names come from the id alone, which :func:`canonical_id` checks is a UUID: a client's file name or
path never reaches the file system. Each file is written to a temporary name, fsynced and renamed
over (``os.replace``), so a reader sees the old file or the new one, never part of one; files are
created 0o600 and directories 0o700. Blocking calls run on a thread. Several hub processes on one
machine may share the directory; nodes on several machines need the S3 store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path

from hub.media_store import MediaRecord, MediaStoreError, canonical_id, indexed_under, owner_tag


class LocalMediaStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = Path(directory)

    def _paths(self, media_id: str) -> tuple[Path, Path] | None:
        canonical = canonical_id(media_id)
        if canonical is None:
            return None
        folder = self._dir / canonical[:2]
        return folder / canonical, folder / f"{canonical}.json"

    async def put(self, record: MediaRecord, data: bytes) -> None:
        paths = self._paths(record.id)
        if paths is None:
            raise ValueError(f"a media id is a canonical UUID, not {record.id!r}")
        try:
            await asyncio.to_thread(self._put, paths, record, data)
        except OSError as exc:
            raise MediaStoreError(f"cannot write media {record.id}: {exc}") from exc

    def _put(self, paths: tuple[Path, Path], record: MediaRecord, data: bytes) -> None:
        data_path, record_path = paths
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_path.parent.mkdir(mode=0o700, exist_ok=True)
        _write_atomically(data_path, data)
        owners = self._owner_dir(record.owner)
        owners.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomically(owners / record.id, b"")  # before the record: whatever is visible is listed
        _write_atomically(record_path, record.to_json())  # last: the record makes the media visible

    def _owner_dir(self, owner: str) -> Path:
        return self._dir / "owners" / owner_tag(owner)

    async def owned_by(self, owner: str) -> list[str]:
        folder = self._owner_dir(owner)
        try:
            names = await asyncio.to_thread(lambda: sorted(p.name for p in folder.iterdir()))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise MediaStoreError(f"cannot list an owner's media: {exc}") from exc
        return [name for name in names if canonical_id(name) == name]

    async def delete(self, media_id: str, owner: str | None = None) -> bool:
        paths = self._paths(media_id)
        if paths is None:
            return False
        try:
            return await asyncio.to_thread(self._delete, media_id, paths, owner)
        except OSError as exc:
            raise MediaStoreError(f"cannot delete media {media_id}: {exc}") from exc

    def _delete(self, media_id: str, paths: tuple[Path, Path], owner: str | None) -> bool:
        data_path, record_path = paths
        try:
            record: MediaRecord | None = MediaRecord.from_json(record_path.read_bytes())
        except FileNotFoundError:
            record = None
        if record is not None:
            _unlink_durably(record_path)  # first: the media is gone for readers from here on
        _unlink_durably(data_path)
        for indexed_by in indexed_under(record, owner):
            _unlink_durably(self._owner_dir(indexed_by) / media_id)
        return record is not None

    async def get(self, media_id: str) -> MediaRecord | None:
        paths = self._paths(media_id)
        raw = None if paths is None else await self._read(paths[1])
        return None if raw is None else MediaRecord.from_json(raw)

    async def read(self, media_id: str) -> bytes | None:
        paths = self._paths(media_id)
        return None if paths is None else await self._read(paths[0])

    async def _read(self, path: Path) -> bytes | None:
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MediaStoreError(f"cannot read {path.name}: {exc}") from exc

    async def close(self) -> None:
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)  # the rename is durable once the directory is


def _unlink_durably(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
