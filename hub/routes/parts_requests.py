"""/api/v1/schools/{school_id}/parts-requests: parts requisitions for a school's vehicles and equipment
(storage/parts.py: statuses, the queue and its guarantees; hub/schools.py: who may act for a school).

POST /…/parts-requests                          Idempotency-Key; {asset_id, needed_by, policy?, lines}
GET  /…/parts-requests                          status, asset_id, needed_by_from, needed_by_to, cursor, limit
GET  /…/parts-requests/{request_id}             (ETag: the version)
POST /…/parts-requests/{request_id}/transitions {status} (If-Match: the version read)

A line is ``{"sku", "quantity"}`` or ``{"query": {"category"?, "attributes"?, "fits_asset"?},
"quantity"}``: the product of that category whose attributes match (hub/fitment.py), ``fits_asset``
adding the asset's own ``fitment.make``, ``fitment.model`` and ``fitment.year``; of those that fit, the
one with the most units available in the school's region.

The key is the school's: a retry with the same key and body answers the first answer again
(``Idempotent-Replayed: true``) and makes nothing; another body with that key is 422
``idempotency_key_reused``. ``picked`` and ``shipped`` are the supplier's (admin and service tokens);
a school's key may ask for ``delivered`` and ``cancelled`` (else 403 ``transition_forbidden``).
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from aiohttp import web

from hub.errors import Forbidden, NotFoundError
from hub.fitment import ATTRIBUTE_FILTERS
from hub.keys import STORE
from hub.responses import expected_version, iso, json_response, not_modified, version_etag
from hub.routes.catalog import CATEGORY, SKU_PATTERN
from hub.routes.reservations import idempotency_key, request_hash
from hub.routes.schools import decode_cursor, encode_cursor
from hub.schools import is_supplier, school_of
from hub.validation import (
    Field,
    FieldError,
    Validator,
    body_schema,
    choice,
    described,
    integer,
    list_of,
    path_uuid,
    query_choice,
    query_int,
    query_text,
    read_json,
    string,
    uuid_string,
    validate,
)
from storage.attributes import AttributeFilter
from storage.parts import (
    REQUESTABLE,
    Asset,
    NewPartsLine,
    NewPartsRequest,
    PartsQuery,
    PartsRequest,
    PartsRequestQuery,
    PartsStatus,
    Policy,
    parts_request_to_dict,
)

routes = web.RouteTableDef()

MAX_LINES = 50
MAX_QUANTITY = 10_000
MAX_PAGE = 200
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# What a school's own key may ask for; picked and shipped are the supplier's.
SCHOOL_TRANSITIONS = frozenset({PartsStatus.DELIVERED, PartsStatus.CANCELLED})


def _date(value: Any) -> str:
    if not isinstance(value, str):
        raise FieldError("wrong_type", "expected a date, YYYY-MM-DD")
    if not _DATE.fullmatch(value):
        raise FieldError("invalid_format", "expected a date, YYYY-MM-DD")
    try:
        datetime.date.fromisoformat(value)
    except ValueError as exc:
        raise FieldError("invalid_format", "not a calendar date") from exc
    return value


DATE = described(_date, {"type": "string", "format": "date"})


def _one_of(fields: dict[str, Field], names: tuple[str, ...]) -> Validator:
    """An object of ``fields`` naming exactly one of ``names``."""

    def check(value: Any) -> dict[str, Any]:
        clean = validate(value, fields)
        if sum(name in clean for name in names) != 1:
            raise FieldError("one_of_required", f"exactly one of {' or '.join(names)}")
        return clean

    return described(check, {**body_schema(fields), "oneOf": [{"required": [n]} for n in names]})


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise FieldError("wrong_type", "expected true or false")
    return value


_QUERY_FIELDS = {
    "category": Field(CATEGORY),
    "attributes": Field(ATTRIBUTE_FILTERS),
    "fits_asset": Field(described(_boolean, {"type": "boolean"})),
}


def _query_object(value: Any) -> dict[str, Any]:
    clean = validate(value, _QUERY_FIELDS)
    if "category" not in clean and "attributes" not in clean and not clean.get("fits_asset"):
        raise FieldError("empty_query", "a fitment query needs a category, attributes or fits_asset")
    return clean


QUERY = described(
    _query_object,
    {
        **body_schema(_QUERY_FIELDS),
        "anyOf": [
            {"required": ["category"]},
            {"required": ["attributes"]},
            {"required": ["fits_asset"], "properties": {"fits_asset": {"const": True}}},
        ],
        "description": "a fitment query: the products of the category whose attributes match (fits_asset:"
        " also the asset's fitment.make, fitment.model, fitment.year)",
    },
)
LINE_FIELDS = {
    "sku": Field(string(1, 64, SKU_PATTERN)),
    "query": Field(QUERY),
    "quantity": Field(integer(1, MAX_QUANTITY), required=True),
}
REQUEST_FIELDS = {
    "asset_id": Field(uuid_string, required=True),
    "needed_by": Field(DATE, required=True),
    "policy": Field(choice(*(p.value for p in Policy))),
    "lines": Field(list_of(_one_of(LINE_FIELDS, ("sku", "query")), 1, MAX_LINES), required=True),
}
TRANSITION_FIELDS = {"status": Field(choice(*(s.value for s in REQUESTABLE)), required=True)}


def render(stored: dict[str, Any]) -> dict[str, Any]:
    """A request (storage.parts.parts_request_to_dict) as the API shows it: ISO times."""
    return {**stored, "created_at": iso(stored["created_at"]), "updated_at": iso(stored["updated_at"])}


def _response(request: PartsRequest) -> web.Response:
    return json_response(render(parts_request_to_dict(request)), etag=version_etag(request.version))


def _line(data: dict[str, Any], asset: Asset | None) -> NewPartsLine:
    query = data.get("query")
    if query is None:
        return NewPartsLine(data["quantity"], sku=data["sku"])
    filters: dict[tuple[str, ...], str] = {}
    if query.get("fits_asset") and asset is not None:
        filters[("fitment", "make")] = asset.make
        filters[("fitment", "model")] = asset.model
        if asset.year is not None:
            filters[("fitment", "year")] = str(asset.year)
    for item in query.get("attributes", ()):  # (named ones win over the asset's)
        filters[item.path] = item.value
    attributes = tuple(AttributeFilter(path, value) for path, value in filters.items())
    return NewPartsLine(data["quantity"], query=PartsQuery(query.get("category"), attributes))


@routes.post("/api/v1/schools/{school_id}/parts-requests", name="create_parts_request")
async def create_parts_request(request: web.Request) -> web.StreamResponse:
    school, who = await school_of(request)
    key = idempotency_key(request)
    data = validate(await read_json(request), REQUEST_FIELDS)
    store = request.app[STORE]
    asset = None
    if any(line.get("query", {}).get("fits_asset") for line in data["lines"]):
        asset = await store.get_asset(school.id, data["asset_id"])
        if asset is None:
            raise NotFoundError("the school has no such asset", code="asset_not_found")
    new = NewPartsRequest(
        asset_id=data["asset_id"],
        needed_by=data["needed_by"],
        policy=Policy(data.get("policy", Policy.ALL_OR_NONE.value)),
        lines=tuple(_line(line, asset) for line in data["lines"]),
    )
    outcome = await store.create_parts_request(school.id, key, request_hash(data), new, who.sub)
    body = render(outcome.answer)
    return json_response(
        body,
        status=201,
        etag=version_etag(body["version"]),
        headers={
            "Idempotent-Replayed": "true" if outcome.replayed else "false",
            "Location": f"/api/v1/schools/{school.id}/parts-requests/{outcome.request_id}",
        },
    )


@routes.get("/api/v1/schools/{school_id}/parts-requests", name="list_parts_requests")
async def list_parts_requests(request: web.Request) -> web.StreamResponse:
    school, _ = await school_of(request)
    status = query_choice(request, "status", frozenset(s.value for s in PartsStatus))
    limit = query_int(request, "limit", 50, 1, MAX_PAGE)
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor, (int, str)) if cursor else None
    query = PartsRequestQuery(
        school_id=school.id,
        status=PartsStatus(status) if status else None,
        asset_id=query_text(request, "asset_id", uuid_string),
        needed_from=query_text(request, "needed_by_from", DATE),
        needed_to=query_text(request, "needed_by_to", DATE),
        limit=limit,
        after=(after[0], after[1]) if after else None,
    )
    page = await request.app[STORE].list_parts_requests(query)
    next_cursor = encode_cursor(list(page.next_after)) if page.next_after else None
    return json_response(
        {"items": [render(parts_request_to_dict(r)) for r in page.items], "next_cursor": next_cursor}
    )


async def _request_id(request: web.Request) -> str:
    return path_uuid(request, "request_id")


@routes.get("/api/v1/schools/{school_id}/parts-requests/{request_id}", name="get_parts_request")
async def get_parts_request(request: web.Request) -> web.StreamResponse:
    school, _ = await school_of(request)
    found = await request.app[STORE].get_parts_request(school.id, await _request_id(request))
    if found is None:
        raise NotFoundError("no such parts request", code="parts_request_not_found")
    etag = version_etag(found.version)
    if not_modified(request, etag):
        return web.Response(status=304, headers={"ETag": etag})
    return _response(found)


@routes.post(
    "/api/v1/schools/{school_id}/parts-requests/{request_id}/transitions", name="transition_parts_request"
)
async def transition_parts_request(request: web.Request) -> web.StreamResponse:
    school, who = await school_of(request)
    request_id = await _request_id(request)
    version = expected_version(request)
    target = PartsStatus(validate(await read_json(request), TRANSITION_FIELDS)["status"])
    if target not in SCHOOL_TRANSITIONS and not is_supplier(who):
        raise Forbidden(
            f"{target.value} is the supplier's to record (admin or service tokens)",
            code="transition_forbidden",
            requested_status=target.value,
        )
    changed, _ = await request.app[STORE].transition_parts_request(school.id, request_id, target, version)
    return _response(changed)
