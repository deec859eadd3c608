"""/api/v1/schools: the schools the parts supplier serves, and their assets (hub/schools.py: who may act
for a school).

POST  /api/v1/schools                                  admin: {id, name, region, api_keys?}
GET   /api/v1/schools                                  admin, service: all; a school's key: its schools
GET   /api/v1/schools/{school_id}                      (ETag)
PATCH /api/v1/schools/{school_id}                      admin: {name?, api_keys?} (If-Match)
POST  /api/v1/schools/{school_id}/assets               admin, or the school's key: {asset_tag, kind, …}
GET   /api/v1/schools/{school_id}/assets               by asset tag (cursor, limit)
GET   /api/v1/schools/{school_id}/assets/{asset_id}    (ETag)
PATCH /api/v1/schools/{school_id}/assets/{asset_id}    admin, or the school's key (If-Match)

A school's region is fixed once made: its requests' stock comes from that region's warehouses, and
its events go to that region's streams.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

import orjson
from aiohttp import web

from hub.auth import require
from hub.errors import BadRequest, NotFoundError
from hub.keys import STORE
from hub.responses import expected_version, iso, json_response, not_modified, version_etag
from hub.routes.inventory import REGION_PATTERN
from hub.schools import SCHOOL_ID, key_family, school_of
from hub.validation import (
    Field,
    Validator,
    choice,
    integer,
    list_of,
    path_uuid,
    query_int,
    read_json,
    string,
    validate,
)
from storage.parts import Asset, AssetKind, School

routes = web.RouteTableDef()

MAX_PAGE = 200
ASSET_TAG = r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}"
_KEY_ID = string(16, 16, r"[0-9A-Za-z]{16}")  # an API key's id (hub/api_keys.py)


def nullable(check: Validator) -> Validator:
    def inner(value: Any) -> Any:
        return None if value is None else check(value)

    inner.schema = {"anyOf": [getattr(check, "schema", {}), {"type": "null"}]}  # type: ignore[attr-defined]
    return inner


SCHOOL_FIELDS = {
    "id": Field(string(1, 64, SCHOOL_ID), required=True),
    "name": Field(string(1, 200), required=True),
    "region": Field(string(1, 32, REGION_PATTERN), required=True),
    "api_keys": Field(list_of(_KEY_ID, 0, 20, unique=True)),
}
SCHOOL_PATCH_FIELDS = {"name": SCHOOL_FIELDS["name"], "api_keys": SCHOOL_FIELDS["api_keys"]}
ASSET_FIELDS = {
    "asset_tag": Field(string(1, 64, ASSET_TAG), required=True),
    "kind": Field(choice(*(k.value for k in AssetKind)), required=True),
    "make": Field(string(1, 64), required=True),
    "model": Field(string(1, 64), required=True),
    "year": Field(nullable(integer(1900, 2100))),
}


def render_school(school: School) -> dict[str, Any]:
    return {
        "id": school.id,
        "name": school.name,
        "region": school.region,
        "api_keys": list(school.api_keys),
        "created_at": iso(school.created_at),
        "updated_at": iso(school.updated_at),
        "version": school.version,
    }


def render_asset(asset: Asset) -> dict[str, Any]:
    return {
        "id": asset.id,
        "school_id": asset.school_id,
        "asset_tag": asset.asset_tag,
        "kind": asset.kind.value,
        "make": asset.make,
        "model": asset.model,
        "year": asset.year,
        "created_at": iso(asset.created_at),
        "updated_at": iso(asset.updated_at),
        "version": asset.version,
    }


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def decode_cursor(raw: str, types: tuple[type, ...]) -> list[Any]:
    """A cursor this server issued: a list of values of ``types``; else 400 invalid_cursor."""
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(raw.encode("ascii") + b"=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
        raise BadRequest("the cursor is not one this server issued", code="invalid_cursor") from exc
    if (
        not isinstance(decoded, list)
        or len(decoded) != len(types)
        or not all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(decoded, types, strict=True))
        or any(isinstance(v, str) and (len(v) > 200 or "\x00" in v) for v in decoded)
        or any(isinstance(v, int) and not -(2**63) <= v < 2**63 for v in decoded)
    ):
        raise BadRequest("the cursor is not one this server issued", code="invalid_cursor")
    return decoded


async def key_families(request: web.Request, key_ids: list[str]) -> tuple[str, ...]:
    """The families of the API keys named (a rotated key is bound by its chain); 404 api_key_not_found."""
    families = []
    for key_id in key_ids:
        key = await request.app[STORE].get_api_key(key_id)
        if key is None:
            raise NotFoundError("no such API key", code="api_key_not_found", key_id=key_id)
        families.append(key.family_id)
    return tuple(sorted(set(families)))


def _school_response(
    school: School, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response(
        render_school(school), status=status, etag=version_etag(school.version), headers=headers
    )


@routes.post("/api/v1/schools", name="create_school")
async def create_school(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    data = validate(await read_json(request), SCHOOL_FIELDS)
    families = await key_families(request, data.get("api_keys", []))
    school = await request.app[STORE].create_school(
        School(data["id"], data["name"], data["region"], families)
    )
    return _school_response(school, 201, {"Location": f"/api/v1/schools/{school.id}"})


@routes.get("/api/v1/schools", name="list_schools")
async def list_schools(request: web.Request) -> web.StreamResponse:
    who = require(request, "admin", "service")
    limit = query_int(request, "limit", 50, 1, MAX_PAGE)
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor, (str,))[0] if cursor else None
    # A key sees the schools it is bound to; the supplier's tokens see every school.
    family = key_family(who)
    if family is None and who.api_key_id is not None:
        family = ""
    schools = await request.app[STORE].list_schools(limit + 1, after, family)
    page = schools[:limit]
    next_cursor = encode_cursor([page[-1].id]) if len(schools) > limit else None
    return json_response({"items": [render_school(s) for s in page], "next_cursor": next_cursor})


@routes.get("/api/v1/schools/{school_id}", name="get_school")
async def get_school(request: web.Request) -> web.StreamResponse:
    school, _ = await school_of(request)
    etag = version_etag(school.version)
    if not_modified(request, etag):
        return web.Response(status=304, headers={"ETag": etag})
    return _school_response(school)


@routes.patch("/api/v1/schools/{school_id}", name="update_school")
async def update_school(request: web.Request) -> web.StreamResponse:
    school, _ = await school_of(request)
    version = expected_version(request)
    changes = validate(await read_json(request), SCHOOL_PATCH_FIELDS, partial=True)
    if not changes:
        raise BadRequest("the patch changes nothing", code="validation_failed")
    if "api_keys" in changes:
        changes["api_keys"] = await key_families(request, changes["api_keys"])
    return _school_response(await request.app[STORE].update_school(school.id, changes, version))


# -- assets ----------------------------------------------------------------------------------------


def _asset_response(asset: Asset, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(
        render_asset(asset), status=status, etag=version_etag(asset.version), headers=headers
    )


@routes.post("/api/v1/schools/{school_id}/assets", name="create_asset")
async def create_asset(request: web.Request) -> web.StreamResponse:
    school, _ = await school_of(request)
    data = validate(await read_json(request), ASSET_FIELDS)
    asset = await request.app[STORE].create_asset(
        Asset(
            id=str(uuid.uuid4()),
            school_id=school.id,
            asset_tag=data["asset_tag"],
            kind=AssetKind(data["kind"]),
            make=data["make"],
            model=data["model"],
            year=data.get("year"),
        )
    )
    return _asset_response(asset, 201, {"Location": f"/api/v1/schools/{school.id}/assets/{asset.id}"})


@routes.get("/api/v1/schools/{school_id}/assets", name="list_assets")
async def list_assets(request: web.Request) -> web.StreamResponse:
    school, _ = await school_of(request)
    limit = query_int(request, "limit", 50, 1, MAX_PAGE)
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor, (str, str)) if cursor else None
    assets = await request.app[STORE].list_assets(
        school.id, limit + 1, (after[0], after[1]) if after else None
    )
    page = assets[:limit]
    next_cursor = encode_cursor([page[-1].asset_tag, page[-1].id]) if len(assets) > limit else None
    return json_response({"items": [render_asset(a) for a in page], "next_cursor": next_cursor})


async def _asset_of(request: web.Request) -> Asset:
    school, _ = await school_of(request)
    asset = await request.app[STORE].get_asset(school.id, path_uuid(request, "asset_id"))
    if asset is None:
        raise NotFoundError("the school has no such asset", code="asset_not_found")
    return asset


@routes.get("/api/v1/schools/{school_id}/assets/{asset_id}", name="get_asset")
async def get_asset(request: web.Request) -> web.StreamResponse:
    asset = await _asset_of(request)
    etag = version_etag(asset.version)
    if not_modified(request, etag):
        return web.Response(status=304, headers={"ETag": etag})
    return _asset_response(asset)


@routes.patch("/api/v1/schools/{school_id}/assets/{asset_id}", name="update_asset")
async def update_asset(request: web.Request) -> web.StreamResponse:
    asset = await _asset_of(request)
    version = expected_version(request)
    changes = validate(await read_json(request), ASSET_FIELDS, partial=True)
    if not changes:
        raise BadRequest("the patch changes nothing", code="validation_failed")
    if "kind" in changes:
        changes["kind"] = AssetKind(changes["kind"])
    updated = await request.app[STORE].update_asset(asset.school_id, asset.id, changes, version)
    return _asset_response(updated)
