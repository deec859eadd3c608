"""The media store contract, run against both stores: the local directory and an S3 bucket on a real
S3-compatible server (moto's, a test dependency, run as a process with signature checking on: every
request the store makes must carry a valid AWS Signature V4 of a key the server issued).

A missing moto_server is a failure, not a skip: the S3 store is a first-class backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hub.media_store import MediaRecord, MediaStore, MediaStoreError, open_media_store, owner_tag
from hub.media_store_local import LocalMediaStore
from hub.media_store_s3 import S3MediaStore
from hub.settings import Settings
from tests import media_samples as samples
from tests.cluster_helpers import free_port
from tests.conftest import hub_settings, running_hub

BUCKET = "synchub-media"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def store(self, **overrides: Any) -> S3MediaStore:
        options = {"endpoint_url": self.endpoint, "bucket": BUCKET, "access_key": self.access_key}
        options.update(secret_key=self.secret_key, region="us-east-1")
        return S3MediaStore(**{**options, **overrides})


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"moto_server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"moto_server did not listen on port {port} within {seconds} s")


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    executable = Path(sys.executable).with_name("moto_server")
    if not executable.exists():
        pytest.fail("moto_server is missing: the test extras install it (pip install -e '.[test]')")
    import boto3  # moto's own dependency: used only to set the server up, never by the hub

    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    # The first four requests (the set-up below) go unchecked; every later one needs a valid signature
    # of a key the server issued, and the permission.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    proc = subprocess.Popen(
        [str(executable), "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=log
    )
    try:
        _wait_for_port(port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        setup = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        setup.update(aws_access_key_id="setup", aws_secret_access_key="setup")
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="synchub")
        key = iam.create_access_key(UserName="synchub")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="synchub", PolicyName="media", PolicyDocument=json.dumps(policy))
        boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(params=["local", "s3"])
async def media_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MediaStore]:
    store: MediaStore
    if request.param == "local":
        store = LocalMediaStore(tmp_path / "media")
    else:
        store = request.getfixturevalue("s3_server").store()
    yield store
    await store.close()


def record_of(data: bytes, owner: str = "alice", content_type: str = "image/png") -> MediaRecord:
    return MediaRecord(
        id=str(uuid.uuid4()),
        owner=owner,
        content_type=content_type,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        created_at=time.time_ns() // 1000,
    )


# -- the contract, once for both stores --------------------------------------------------------------


async def test_a_put_file_reads_back_with_its_record(media_store: MediaStore) -> None:
    data = samples.png()
    record = record_of(data)
    assert await media_store.get(record.id) is None
    assert await media_store.read(record.id) is None
    await media_store.put(record, data)
    assert await media_store.get(record.id) == record
    assert await media_store.read(record.id) == data


async def test_large_files_and_any_owner_round_trip_byte_for_byte(media_store: MediaStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 1)
    record = record_of(data, owner='émilie/../ "quoted" 😀', content_type="video/mp4")
    await media_store.put(record, data)
    assert await media_store.get(record.id) == record
    assert await media_store.read(record.id) == data


async def test_ids_are_independent_and_concurrent_puts_all_land(media_store: MediaStore) -> None:
    files = [os.urandom(1000 + i) for i in range(8)]
    records = [record_of(data) for data in files]
    await asyncio.gather(*(media_store.put(r, d) for r, d in zip(records, files, strict=True)))
    for record, data in zip(records, files, strict=True):
        assert await media_store.get(record.id) == record
        assert await media_store.read(record.id) == data


async def test_putting_an_id_again_replaces_it(media_store: MediaStore) -> None:
    first = record_of(b"first")
    await media_store.put(first, b"first")
    second = _replace(first, size=6, sha256=hashlib.sha256(b"second").hexdigest())
    await media_store.put(second, b"second")
    assert await media_store.get(first.id) == second
    assert await media_store.read(first.id) == b"second"


@pytest.mark.parametrize(
    "media_id",
    [
        "",
        "x",
        "../../etc/passwd",
        "00000000-0000-4000-8000-00000000000G",
        "/tmp/a",
        "{id}".upper(),
        "{id}.json",
    ],
)
async def test_an_id_that_is_not_a_canonical_uuid_names_nothing(
    media_store: MediaStore, media_id: str
) -> None:
    record = record_of(b"kept")
    await media_store.put(record, b"kept")
    name = media_id.replace("{ID}", record.id.upper()).replace("{id}", record.id)
    assert await media_store.get(name) is None
    assert await media_store.read(name) is None
    with pytest.raises(ValueError):
        await media_store.put(_replace(record, id=name), b"x")


async def test_an_owners_media_are_listed_and_deleted_for_good(media_store: MediaStore) -> None:
    owner, other = f"erasable {uuid.uuid4()}", f"kept {uuid.uuid4()}"  # the S3 bucket is shared
    mine = [record_of(f"mine {i}".encode(), owner=owner) for i in range(3)]
    theirs = record_of(b"theirs", owner=other)
    for record in [*mine, theirs]:
        await media_store.put(record, record.id.encode())
    assert sorted(await media_store.owned_by(owner)) == sorted(r.id for r in mine)
    assert await media_store.owned_by(f"nobody {uuid.uuid4()}") == []
    assert await media_store.delete(mine[0].id) is True
    assert await media_store.get(mine[0].id) is None
    assert await media_store.read(mine[0].id) is None
    assert sorted(await media_store.owned_by(owner)) == sorted(r.id for r in mine[1:])
    assert await media_store.delete(mine[0].id) is False  # again: nothing left, no error
    assert await media_store.delete(str(uuid.uuid4())) is False
    assert await media_store.delete("../../etc/passwd") is False
    assert await media_store.owned_by(other) == [theirs.id]
    assert await media_store.read(theirs.id) == theirs.id.encode()


async def test_an_owner_index_pages_past_one_listing(s3_server: S3Server) -> None:
    # ListObjectsV2 answers 1,000 keys at most: the continuation token must be followed.
    store = s3_server.store()
    owner = f"prolific {uuid.uuid4()}"
    records = [record_of(b"", owner=owner) for _ in range(1003)]
    try:
        for start in range(0, len(records), 50):
            await asyncio.gather(*(store.put(r, b"") for r in records[start : start + 50]))
        assert sorted(await store.owned_by(owner)) == sorted(r.id for r in records)
    finally:
        await store.close()


async def test_a_delete_cut_short_after_the_record_is_finished_by_its_owner(
    media_store: MediaStore,
) -> None:
    owner = f"interrupted {uuid.uuid4()}"
    record = record_of(b"half", owner=owner)
    await media_store.put(record, b"half")
    if isinstance(media_store, LocalMediaStore):  # the record went, then the process died
        (media_store._dir / record.id[:2] / f"{record.id}.json").unlink()
    else:
        assert isinstance(media_store, S3MediaStore)
        await media_store._request("DELETE", f"media/{record.id}.json")
    assert await media_store.owned_by(owner) == [record.id]
    assert await media_store.delete(record.id) is False  # no record: the index entry is left
    assert await media_store.owned_by(owner) == [record.id]
    assert await media_store.delete(record.id, owner) is False
    assert await media_store.owned_by(owner) == []
    assert await media_store.read(record.id) is None


def _replace(record: MediaRecord, **changes: Any) -> MediaRecord:
    fields = {name: getattr(record, name) for name in MediaRecord.__dataclass_fields__}
    return MediaRecord(**{**fields, **changes})


# -- the local directory ----------------------------------------------------------------------------


async def test_local_files_are_named_by_the_id_private_and_leave_no_temporaries(tmp_path: Path) -> None:
    store = LocalMediaStore(tmp_path / "media")
    record = record_of(b"data")
    await store.put(record, b"data")
    folder = tmp_path / "media" / record.id[:2]
    assert sorted(p.name for p in folder.iterdir()) == [record.id, f"{record.id}.json"]
    index = tmp_path / "media" / "owners" / owner_tag(record.owner)
    assert [p.name for p in index.iterdir()] == [record.id]  # the owner's tag, never the owner
    assert stat.S_IMODE(folder.stat().st_mode) == stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_local_bytes_without_their_record_are_not_visible(tmp_path: Path) -> None:
    # What a put that failed between its two writes leaves behind.
    store = LocalMediaStore(tmp_path / "media")
    record = record_of(b"orphan")
    await store.put(record, b"orphan")
    (tmp_path / "media" / record.id[:2] / f"{record.id}.json").unlink()
    assert await store.get(record.id) is None


async def test_a_damaged_local_record_is_a_store_error(tmp_path: Path) -> None:
    store = LocalMediaStore(tmp_path / "media")
    record = record_of(b"x")
    await store.put(record, b"x")
    (tmp_path / "media" / record.id[:2] / f"{record.id}.json").write_bytes(b'{"id": 1}')
    with pytest.raises(MediaStoreError):
        await store.get(record.id)


# -- the S3 bucket ----------------------------------------------------------------------------------


async def test_the_s3_server_refuses_a_wrong_secret_key(s3_server: S3Server) -> None:
    # The server checks signatures: the store's are right because they pass, not because nothing looks.
    store = s3_server.store(secret_key="not-the-secret")
    try:
        with pytest.raises(MediaStoreError, match="SignatureDoesNotMatch"):
            await store.put(record_of(b"x"), b"x")
        with pytest.raises(MediaStoreError, match="SignatureDoesNotMatch"):
            await store.get(str(uuid.uuid4()))
    finally:
        await store.close()


async def test_a_missing_bucket_is_an_error_not_a_missing_file(s3_server: S3Server) -> None:
    store = s3_server.store(bucket="no-such-bucket")
    try:
        with pytest.raises(MediaStoreError, match="NoSuchBucket"):
            await store.get(str(uuid.uuid4()))
    finally:
        await store.close()


async def test_an_unreachable_s3_endpoint_is_a_store_error() -> None:
    store = S3MediaStore(f"http://127.0.0.1:{free_port()}", BUCKET, "k", "s")
    try:
        with pytest.raises(MediaStoreError):
            await store.read(str(uuid.uuid4()))
    finally:
        await store.close()


@pytest.mark.parametrize("endpoint", ["ftp://host", "127.0.0.1:9000", ""])
def test_an_s3_endpoint_is_an_http_url(endpoint: str) -> None:
    with pytest.raises(ValueError):
        S3MediaStore(endpoint, BUCKET, "k", "s")


@pytest.mark.parametrize("bucket", ["", "a", "UPPER", "under_score", "-dash", "x" * 64])
def test_a_bucket_name_is_checked(bucket: str) -> None:
    with pytest.raises(ValueError):
        S3MediaStore("http://127.0.0.1:9000", bucket, "k", "s")


# -- which store the hub opens ----------------------------------------------------------------------


def test_the_hub_opens_the_local_directory_by_default_and_s3_when_a_bucket_is_set(tmp_path: Path) -> None:
    assert isinstance(open_media_store(Settings(media_dir=str(tmp_path))), LocalMediaStore)
    s3 = Settings(
        media_s3_endpoint="http://127.0.0.1:9000",
        media_s3_bucket=BUCKET,
        media_s3_access_key="k",
        media_s3_secret_key="s",
    )
    assert isinstance(open_media_store(s3), S3MediaStore)
    with pytest.raises(ValueError, match="--media-s3-endpoint"):
        open_media_store(Settings(media_s3_bucket=BUCKET, media_s3_access_key="k", media_s3_secret_key="s"))


async def test_a_hub_with_an_s3_bucket_stores_uploads_there_and_serves_them(
    s3_server: S3Server, tmp_path: Path
) -> None:
    settings = hub_settings(
        str(tmp_path / "hub.sqlite3"),
        media_dir=str(tmp_path / "unused"),
        media_s3_endpoint=s3_server.endpoint,
        media_s3_bucket=BUCKET,
        media_s3_access_key=s3_server.access_key,
        media_s3_secret_key=s3_server.secret_key,
    )
    async with running_hub(settings) as hub:
        image = samples.jpeg(samples.segment(0xE1, samples.exif_with_gps()))
        status, body, _ = await hub.call(
            "POST", "/api/v1/media", token=hub.alice, data=image, headers={"Content-Type": "image/jpeg"}
        )
        assert status == 201, body
        async with hub.session.get(hub.base + body["url"]) as response:
            assert response.status == 200
            assert await response.read() == samples.jpeg()
        store = s3_server.store()
        try:
            assert await store.read(body["id"]) == samples.jpeg()
        finally:
            await store.close()
    assert not (tmp_path / "unused").exists()
