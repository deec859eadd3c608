"""AWS Signature Version 4 for the requests the S3 media store makes (header-based, HMAC-SHA256).

Written here rather than pulling in boto3: the store makes three kinds of request, and signing them
is these few functions. ``tests/test_media.py`` holds them to AWS's published examples (the SigV4
test suite's get-vanilla family and the S3 API reference's GET and PUT Object) and to a real
S3-compatible server that checks every signature.

The path is given unencoded and each of its segments is percent-encoded once, as S3 wants (other
services encode twice; the store signs only S3 requests). Every header given is signed: pass the
``host`` and ``x-amz-date`` headers, and ``x-amz-content-sha256`` for S3.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def amz_date(now: float | None = None) -> str:
    """The ``x-amz-date`` of an instant: ``20150830T123600Z``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def _encode(value: str) -> str:
    return quote(value, safe="-_.~")  # RFC 3986 unreserved characters stay, every other byte is %XX


def encode_path(path: str) -> str:
    """The canonical URI of an S3 path: each segment encoded once, the slashes kept."""
    return "/".join(_encode(segment) for segment in path.split("/")) or "/"


def canonical_query(query: Iterable[tuple[str, str]]) -> str:
    """The canonical query string: names and values encoded, sorted (also what a request sends)."""
    return "&".join(f"{k}={v}" for k, v in sorted((_encode(k), _encode(v)) for k, v in query))


def canonical_request(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    payload_sha256: str,
) -> tuple[str, str]:
    """The canonical request and its signed headers' list."""
    canonical = canonical_query(query)
    # Names lower-cased, values trimmed with inner runs of spaces made one; sorted by name.
    lines = sorted((name.lower().strip(), " ".join(value.split())) for name, value in headers.items())
    signed = ";".join(name for name, _ in lines)
    canonical_headers = "".join(f"{name}:{value}\n" for name, value in lines)
    request = "\n".join(
        [method.upper(), encode_path(path), canonical, canonical_headers, signed, payload_sha256]
    )
    return request, signed


def string_to_sign(date_time: str, scope: str, request: str) -> str:
    return "\n".join([ALGORITHM, date_time, scope, hashlib.sha256(request.encode()).hexdigest()])


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def authorization(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    payload_sha256: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    service: str,
) -> str:
    """The ``Authorization`` header for a request whose ``headers`` (all signed) hold its x-amz-date."""
    date_time = next(v for k, v in headers.items() if k.lower() == "x-amz-date")
    scope = f"{date_time[:8]}/{region}/{service}/aws4_request"
    request, signed = canonical_request(method, path, query, headers, payload_sha256)
    key = signing_key(secret_key, date_time[:8], region, service)
    signature = hmac.new(key, string_to_sign(date_time, scope, request).encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
