"""The media store in an S3-compatible bucket: object ``media/<uuid>`` holds the bytes and
``media/<uuid>.json`` the record, written after them; ``owners/<owner tag>/<uuid>``, an empty
object written before the record, is the owner index (``owned_by``: one ListObjectsV2 per 1,000).

Requests are path-style (``<endpoint>/<bucket>/<key>``, which AWS, MinIO, Ceph, Garage and moto all
serve) and signed with AWS Signature V4 (``hub/sigv4.py``) over aiohttp: no boto3 at run time. Every
PUT carries the payload's SHA-256 (``x-amz-content-sha256``), signed, so AWS S3 and MinIO refuse bytes
that are not the ones hashed (moto, the test server, does not check it).

The bucket must exist: the store never creates one. Its keys need s3:GetObject, s3:PutObject,
s3:DeleteObject (erasure) and s3:ListBucket (the owner index; and without it S3 answers a missing key
with 403, an error here, not "not found").
Tested against moto's S3 server with signature checking on (``tests/test_media_store.py``).
"""

from __future__ import annotations

import hashlib
import html
import io
import re
from typing import Any

import aiohttp
from yarl import URL

from hub import sigv4
from hub.media_store import MediaRecord, MediaStoreError, canonical_id, indexed_under, owner_tag

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_PREFIX = "media/"
_OWNERS = "owners/"
_KEY = re.compile(rb"<Key>([^<]{1,300})</Key>")
_NEXT = re.compile(rb"<NextContinuationToken>([^<]{1,2000})</NextContinuationToken>")


class S3MediaStore:
    def __init__(
        self,
        endpoint_url: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        *,
        timeout_seconds: float = 60.0,
    ) -> None:
        endpoint = URL(endpoint_url)
        if endpoint.scheme not in ("http", "https") or not endpoint.host:
            raise ValueError(f"the S3 endpoint is an http(s) URL, not {endpoint_url!r}")
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"not an S3 bucket name: {bucket!r}")
        self._endpoint = endpoint.with_path("/")
        self._host = endpoint.host if endpoint.is_default_port() else f"{endpoint.host}:{endpoint.port}"
        self._bucket = bucket
        self._access_key = access_key
        self._secret_key = secret_key
        self._region = region
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def put(self, record: MediaRecord, data: bytes) -> None:
        if canonical_id(record.id) is None:
            raise ValueError(f"a media id is a canonical UUID, not {record.id!r}")
        await self._request("PUT", _PREFIX + record.id, data, record.content_type, record.sha256)
        await self._request("PUT", f"{_OWNERS}{owner_tag(record.owner)}/{record.id}", b"")
        await self._request("PUT", f"{_PREFIX}{record.id}.json", record.to_json(), "application/json")

    async def owned_by(self, owner: str) -> list[str]:
        prefix = f"{_OWNERS}{owner_tag(owner)}/"
        found: list[str] = []
        token: str | None = None
        while True:
            query = [("list-type", "2"), ("prefix", prefix)]
            if token is not None:
                query.append(("continuation-token", token))
            _, reply = await self._request("GET", "", query=query)
            for key in _KEY.findall(reply):
                media_id = key.decode(errors="replace").removeprefix(prefix)
                if canonical_id(media_id) == media_id:
                    found.append(media_id)
            following = _NEXT.search(reply)
            if following is None:
                return found
            token = html.unescape(following.group(1).decode())

    async def delete(self, media_id: str, owner: str | None = None) -> bool:
        if canonical_id(media_id) is None:
            return False
        record = await self.get(media_id)
        # S3 answers a DELETE of a missing key with 204: each of these is idempotent.
        await self._request("DELETE", f"{_PREFIX}{media_id}.json")  # first: gone for readers
        await self._request("DELETE", _PREFIX + media_id)
        for indexed_by in indexed_under(record, owner):
            await self._request("DELETE", f"{_OWNERS}{owner_tag(indexed_by)}/{media_id}")
        return record is not None

    async def get(self, media_id: str) -> MediaRecord | None:
        raw = await self._object(f"{media_id}.json", media_id)
        return None if raw is None else MediaRecord.from_json(raw)

    async def read(self, media_id: str) -> bytes | None:
        return await self._object(media_id, media_id)

    async def _object(self, name: str, media_id: str) -> bytes | None:
        if canonical_id(media_id) is None:
            return None
        status, body = await self._request("GET", _PREFIX + name, expect_missing=True)
        return None if status == 404 else body

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self,
        method: str,
        key: str,
        body: bytes = b"",
        content_type: str | None = None,
        payload_sha256: str | None = None,
        *,
        query: list[tuple[str, str]] | None = None,
        expect_missing: bool = False,
    ) -> tuple[int, bytes]:
        path = f"/{self._bucket}/{key}"
        digest = payload_sha256 or hashlib.sha256(body).hexdigest()
        headers = {"host": self._host, "x-amz-content-sha256": digest, "x-amz-date": sigv4.amz_date()}
        if content_type is not None:
            headers["content-type"] = content_type
        headers["authorization"] = sigv4.authorization(
            method,
            path,
            query or [],
            headers,
            digest,
            access_key=self._access_key,
            secret_key=self._secret_key,
            region=self._region,
            service="s3",
        )
        url = self._endpoint.with_path(sigv4.encode_path(path), encoded=True)
        if query:
            # Sent encoded exactly as signed (yarl's own quoting leaves "/" as it is; SigV4 does not).
            url = URL(f"{url}?{sigv4.canonical_query(query)}", encoded=True)
        if self._session is None:
            # auto_decompress off: the bytes read are the bytes stored, whatever a server says.
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        # A file object, not bytes: aiohttp streams it instead of warning about large bodies.
        options: dict[str, Any] = {"data": io.BytesIO(body)} if method == "PUT" else {}
        try:
            async with self._session.request(method, url, headers=headers, **options) as response:
                reply = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MediaStoreError(f"S3 {method} {key}: {exc!r}") from exc
        # A missing key is an answer; a missing bucket (also 404) is a misconfiguration.
        if status < 300 or (expect_missing and status == 404 and _s3_error(reply) == "NoSuchKey"):
            return status, reply
        raise MediaStoreError(f"S3 {method} {key}: HTTP {status}: {_s3_error(reply)}")


def _s3_error(reply: bytes) -> str:
    code = re.search(rb"<Code>([^<]{1,100})</Code>", reply)
    return code.group(1).decode(errors="replace") if code else reply[:200].decode(errors="replace")
