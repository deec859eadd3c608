"""/api/v1/api-keys: partner systems' keys, managed by admins (hub/api_keys.py: the format and checks).

POST   /api/v1/api-keys                 {name, scopes, expires_in?} → the key, shown this once
GET    /api/v1/api-keys                 the keys, newest first, without secrets (cursor, limit)
GET    /api/v1/api-keys/{key_id}        one key
DELETE /api/v1/api-keys/{key_id}        revoke it, at once
POST   /api/v1/api-keys/{key_id}/rotate {overlap_seconds?} → a new key; the old one works for the overlap
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import orjson
from aiohttp import web

from hub.api_keys import KEY_ID, display_prefix, mint, new_key_id, secret_hash, subject
from hub.auth import require
from hub.authz import SCOPES
from hub.errors import BadRequest, NotFoundError
from hub.keys import API_KEYS, STORE
from hub.responses import iso, json_response
from hub.validation import Field, choice, integer, list_of, query_int, read_json, string, validate
from storage.api_keys import ApiKey, NewSecret

routes = web.RouteTableDef()

DEFAULT_OVERLAP_SECONDS = 24 * 3600
MAX_OVERLAP_SECONDS = 30 * 24 * 3600
MAX_LIFETIME_SECONDS = 10 * 366 * 24 * 3600
_NO_STORE = {"Cache-Control": "no-store"}

CREATE_FIELDS = {
    "name": Field(string(1, 100), required=True),
    "scopes": Field(list_of(choice(*SCOPES), 1, len(SCOPES), unique=True), required=True),
    "expires_in": Field(integer(1, MAX_LIFETIME_SECONDS)),
}
ROTATE_FIELDS = {"overlap_seconds": Field(integer(0, MAX_OVERLAP_SECONDS))}


def now_us() -> int:
    return time.time_ns() // 1000


def render(key: ApiKey, now: int) -> dict[str, Any]:
    def at(us: int | None) -> str | None:
        return None if us is None else iso(us)

    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": list(key.scopes),
        "state": str(key.state(now)),
        "subject": subject(key),
        "owner": key.owner,
        "created_at": iso(key.created_at),
        "expires_at": at(key.expires_at),
        "last_used_at": at(key.last_used_at),
        "revoked_at": at(key.revoked_at),
        "rotated_from": key.rotated_from,
        "replaced_by": key.replaced_by,
        "overlap_ends_at": at(key.overlap_ends_at),
    }


def _key_id(request: web.Request) -> str:
    raw = request.match_info["key_id"]
    if not KEY_ID.fullmatch(raw):
        raise BadRequest(f"an API key id is 16 letters and digits, not {raw[:64]!r}", code="invalid_id")
    return raw


def _not_found() -> NotFoundError:
    return NotFoundError("no such API key", code="api_key_not_found")


def _encode_cursor(key: ApiKey) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([key.created_at, key.id])).decode().rstrip("=")


def _decode_cursor(raw: str) -> tuple[int, str]:
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise BadRequest("the cursor is not one this server issued", code="invalid_cursor") from exc
    if (
        not isinstance(decoded, list)
        or len(decoded) != 2
        or not isinstance(decoded[0], int)
        or not isinstance(decoded[1], str)
        or not KEY_ID.fullmatch(decoded[1])
    ):
        raise BadRequest("the cursor is not one this server issued", code="invalid_cursor")
    return decoded[0], decoded[1]


@routes.post("/api/v1/api-keys", name="create_api_key")
async def create_api_key(request: web.Request) -> web.StreamResponse:
    who = require(request, "admin")
    data = validate(await read_json(request), CREATE_FIELDS)
    now = now_us()
    key_id = new_key_id()
    secret = mint(key_id)
    expires_in = data.get("expires_in")
    key = await request.app[STORE].create_api_key(
        ApiKey(
            id=key_id,
            family_id=key_id,
            name=data["name"],
            owner=who.sub,
            scopes=tuple(sorted(data["scopes"])),
            secret_hash=secret_hash(secret),
            prefix=display_prefix(key_id),
            created_at=now,
            expires_at=None if expires_in is None else now + expires_in * 1_000_000,
        )
    )
    return json_response(
        {**render(key, now), "key": secret},
        status=201,
        headers={**_NO_STORE, "Location": f"/api/v1/api-keys/{key_id}"},
    )


@routes.get("/api/v1/api-keys", name="list_api_keys")
async def list_api_keys(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    limit = query_int(request, "limit", 50, 1, 200)
    cursor = request.query.get("cursor")
    after = _decode_cursor(cursor) if cursor else None
    keys = await request.app[STORE].list_api_keys(limit + 1, after)
    now = now_us()
    page = keys[:limit]
    next_cursor = _encode_cursor(page[-1]) if len(keys) > limit else None
    return json_response({"items": [render(k, now) for k in page], "next_cursor": next_cursor})


@routes.get("/api/v1/api-keys/{key_id}", name="get_api_key")
async def get_api_key(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    key = await request.app[STORE].get_api_key(_key_id(request))
    if key is None:
        raise _not_found()
    return json_response(render(key, now_us()))


@routes.delete("/api/v1/api-keys/{key_id}", name="revoke_api_key")
async def revoke_api_key(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    key_id = _key_id(request)
    await request.app[STORE].revoke_api_key(key_id, now_us())
    # refused by this node from now on; by the others within their cache's time
    request.app[API_KEYS].forget(key_id)
    return web.Response(status=204)


@routes.post("/api/v1/api-keys/{key_id}/rotate", name="rotate_api_key")
async def rotate_api_key(request: web.Request) -> web.StreamResponse:
    who = require(request, "admin")
    key_id = _key_id(request)
    data = validate(await read_json(request), ROTATE_FIELDS) if request.body_exists else {}
    overlap = data.get("overlap_seconds", DEFAULT_OVERLAP_SECONDS)
    now = now_us()
    new_id = new_key_id()
    secret = mint(new_id)
    old, new = await request.app[STORE].rotate_api_key(
        key_id,
        NewSecret(new_id, who.sub, secret_hash(secret), display_prefix(new_id), now),
        now + overlap * 1_000_000,
    )
    request.app[API_KEYS].forget(key_id)
    return json_response(
        {**render(new, now), "key": secret, "previous": render(old, now)},
        status=201,
        headers={**_NO_STORE, "Location": f"/api/v1/api-keys/{new_id}"},
    )
