"""/api/v1/media: uploads for reviews, and the signed URLs that serve them (hub/media.py).

    POST /api/v1/media               the file as the body (customer role) → 201 its record and a URL
    GET  /api/v1/media/{id}          ?exp=&sig=: the bytes, no token needed (Range: one byte range, 206)
    GET  /api/v1/media/{id}/info     the record and a fresh URL: the uploader, moderators, admins

Served bytes can never run as a page of this origin: ``Content-Security-Policy: default-src 'none';
sandbox`` and ``X-Content-Type-Options: nosniff`` go with the type sniffed at upload. A media that is
another user's answers ``media_not_found`` on ``/info``, as a missing one does.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from hub.auth import require
from hub.errors import NotFoundError
from hub.keys import SETTINGS
from hub.media import load_bytes, load_record, may_see, read_upload, save_upload, signed_url, verify_signature
from hub.media_store import MediaRecord
from hub.responses import iso, json_response, not_modified
from hub.validation import path_uuid

routes = web.RouteTableDef()


def _not_found() -> NotFoundError:
    return NotFoundError("no such media", code="media_not_found")


def render(request: web.Request, record: MediaRecord) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    url, exp = signed_url(settings.jwt_secret, record.id, settings.media_url_ttl_seconds)
    return {
        "id": record.id,
        "owner": record.owner,
        "content_type": record.content_type,
        "size": record.size,
        "sha256": record.sha256,
        "created_at": iso(record.created_at),
        "url": url,
        "expires_at": iso(exp * 1_000_000),
    }


@routes.post("/api/v1/media", name="upload_media")
async def upload_media(request: web.Request) -> web.StreamResponse:
    who = require(request, "customer")
    content_type, data = await read_upload(request)
    record = await save_upload(request.app, who.sub, content_type, data)
    return json_response(
        render(request, record), status=201, headers={"Location": f"/api/v1/media/{record.id}/info"}
    )


@routes.get("/api/v1/media/{media_id}/info", name="media_info")
async def media_info(request: web.Request) -> web.StreamResponse:
    who = require(request)
    record = await load_record(request.app, path_uuid(request, "media_id"))
    if record is None or not may_see(who, record):
        raise _not_found()
    return json_response(render(request, record))


@routes.get("/api/v1/media/{media_id}", name="get_media")
async def get_media(request: web.Request) -> web.StreamResponse:
    media_id = path_uuid(request, "media_id")
    now = time.time()
    exp = verify_signature(
        request.app[SETTINGS].jwt_secret, media_id, request.query.get("exp"), request.query.get("sig"), now
    )
    record = await load_record(request.app, media_id)
    data = None if record is None else await load_bytes(request.app, media_id)
    if record is None or data is None:
        raise _not_found()
    etag = f'"{record.sha256}"'
    headers = {
        "ETag": etag,
        "Cache-Control": f"private, max-age={max(0, int(exp - now))}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Content-Disposition": "inline",
        "Accept-Ranges": "bytes",
    }
    if not_modified(request, etag):
        return web.Response(status=304, headers=headers)
    byte_range = _range(request.headers.get("Range"), len(data))
    if byte_range is None:
        return web.Response(body=data, content_type=record.content_type, headers=headers)
    start, end = byte_range
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
    return web.Response(status=206, body=data[start:end], content_type=record.content_type, headers=headers)


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """One satisfiable ``bytes=`` range as [start, end); None to send the whole file, which a server
    may always do instead (RFC 9110 §14.2): no header, several ranges, or one it cannot serve."""
    if header is None or "," in header or not header.startswith("bytes="):
        return None
    first, dash, last = header[6:].strip().partition("-")
    if not dash or not all(part.isascii() and part.isdigit() for part in (first, last) if part):
        return None
    if not first:  # the last N bytes
        return (max(0, size - int(last)), size) if last and int(last) > 0 and size else None
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    return (start, end) if start < end else None
