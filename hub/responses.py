"""JSON responses with validators (ETag) and content negotiation for compression.

ETags are strong and derived from the resource's version, so a client's ``If-Match`` is the version it
read. When a response is compressed its ETag is weakened (the bytes differ), and conditional headers
compare the opaque tag ignoring the weak prefix: the version is what matters.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import brotli
import orjson
from aiohttp import web

from hub.errors import BadRequest, PreconditionFailed

COMPRESS_MIN_BYTES = 1024
_COMPRESSIBLE = ("application/json", "application/problem+json")


def iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat().replace("+00:00", "Z")


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(body: Any) -> bytes:
    return orjson.dumps(body, default=_default)


def json_response(
    body: Any, *, status: int = 200, etag: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    response = web.Response(body=dumps(body), status=status, content_type="application/json", headers=headers)
    if etag is not None:
        response.headers["ETag"] = etag
    return response


def version_etag(version: int) -> str:
    return f'"{version}"'


def content_etag(payload: bytes) -> str:
    return 'W/"' + hashlib.blake2b(payload, digest_size=12).hexdigest() + '"'


def _tags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/") for t in header.split(",") if t.strip()]


def not_modified(request: web.Request, etag: str) -> bool:
    header = request.headers.get("If-None-Match")
    if header is None:
        return False
    tags = _tags(header)
    return "*" in tags or etag.removeprefix("W/") in tags


def expected_version(request: web.Request) -> int | None:
    """The version named by If-Match, or None when the header is absent."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    tags = _tags(header)
    if tags == ["*"]:
        return None
    if len(tags) != 1 or not tags[0].startswith('"') or not tags[0].endswith('"'):
        raise BadRequest("If-Match must hold one ETag from a previous response", code="invalid_precondition")
    try:
        # A product's ETag is "{version}-{rating version}": its write version comes first.
        version = int(tags[0].strip('"').split("-", 1)[0])
        if not 0 <= version < 2**63:  # no stored version is one (and a database cannot compare it)
            raise ValueError(version)
        return version
    except ValueError as exc:
        raise PreconditionFailed("If-Match does not name a version of this resource") from exc


def negotiate_encoding(accept_encoding: str) -> str | None:
    best: tuple[float, str] | None = None
    for part in accept_encoding.split(","):
        name, _, params = part.strip().partition(";")
        name = name.strip().lower()
        if name not in ("br", "gzip"):
            continue
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if q <= 0:
            continue
        rank = (q, "1" if name == "br" else "0")  # prefer br on a tie: smaller for JSON
        if best is None or rank > (best[0], "1" if best[1] == "br" else "0"):
            best = (q, name)
    return best[1] if best else None


@web.middleware
async def compression_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    if not isinstance(response, web.Response) or response.content_type not in _COMPRESSIBLE:
        return response
    body = response.body
    if (
        not isinstance(body, bytes)
        or len(body) < COMPRESS_MIN_BYTES
        or "Content-Encoding" in response.headers
    ):
        return response
    encoding = negotiate_encoding(request.headers.get("Accept-Encoding", ""))
    response.headers.add("Vary", "Accept-Encoding")
    if encoding is None:
        return response
    if encoding == "br":
        response.body = brotli.compress(body, quality=5)
    else:
        response.body = gzip.compress(body, compresslevel=6)
    response.headers["Content-Encoding"] = encoding
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        response.headers["ETag"] = "W/" + etag
    return response
