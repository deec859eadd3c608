"""The OpenAPI paths and schemas of schools, their assets and parts requests (``hub/openapi.py`` joins them;
request bodies are made from the routes' own fields there)."""

from __future__ import annotations

from typing import Any

from hub.openapi_build import AUTH_PROBLEMS, op, problems, query, reply

_SCHOOL_ID = {
    "name": "school_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[a-z0-9][a-z0-9\\-]{0,63}$"},
}
_UUID = {"type": "string", "format": "uuid"}
_ASSET_ID = {"name": "asset_id", "in": "path", "required": True, "schema": _UUID}
_REQUEST_ID = {"name": "request_id", "in": "path", "required": True, "schema": _UUID}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]{1,255}$"},
    "description": "the school's: a retry with the same key and body answers the first answer again",
}
_STATUSES = ["requested", "reserved", "backordered", "picked", "shipped", "delivered", "cancelled"]
_WHEN = {"type": "string", "format": "date-time"}
_SCHOOL_404 = "school_not_found: no such school, or one the caller may not act for (not told apart)"
_WHO = (
    "admin and service tokens, and the API keys bound to the school holding parts-requests:write"
    " (docs/api.md, 'School parts requests')"
)


def _page(items: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{items}"}},
            "next_cursor": {"type": ["string", "null"]},
        },
    }


def parts_paths() -> dict[str, Any]:
    cursor = query("cursor", {"type": "string"}, "next_cursor of the previous page")
    limit = query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size (default 50)")
    forbidden = "forbidden: a token without the admin or service role"
    return {
        "/api/v1/schools": {
            "post": op(
                "Make a school (admin): its id, name, region (its requests' stock and events) and the API"
                " keys its platform calls with",
                {
                    "201": reply("School", "made"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="malformed_json, validation_failed",
                        _403="forbidden: needs the admin role",
                        _404="api_key_not_found (key_id): api_keys names a key that does not exist",
                        _409="school_exists",
                    ),
                },
                auth=True,
                body="NewSchool",
            ),
            "get": op(
                "The schools by id: every school for admin and service tokens, a key's own for a key",
                {
                    "200": reply("SchoolPage"),
                    **problems(**AUTH_PROBLEMS, _400="invalid_parameter, invalid_cursor"),
                },
                auth=True,
                params=[cursor, limit],
            ),
        },
        "/api/v1/schools/{school_id}": {
            "get": op(
                f"One school (ETag): {_WHO}",
                {
                    "200": reply("School"),
                    "304": {"description": "not modified"},
                    **problems(**AUTH_PROBLEMS, _404=_SCHOOL_404),
                },
                auth=True,
                params=[_SCHOOL_ID],
            ),
            "patch": op(
                "Rename a school or bind its API keys (the whole list) (admin, If-Match)",
                {
                    "200": reply("School"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="malformed_json, validation_failed (an empty patch too), invalid_precondition",
                        _403="forbidden: needs the admin role",
                        _404=_SCHOOL_404 + "; api_key_not_found",
                        _412="precondition_failed",
                    ),
                },
                auth=True,
                body="SchoolPatch",
                params=[_SCHOOL_ID],
            ),
        },
        "/api/v1/schools/{school_id}/assets": {
            "post": op(
                f"Add a vehicle or equipment to a school: {_WHO}",
                {
                    "201": reply("Asset", "added"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="malformed_json, validation_failed",
                        _403=forbidden,
                        _404=_SCHOOL_404,
                        _409="asset_tag_taken: the school has an asset with that tag",
                    ),
                },
                auth=True,
                body="NewAsset",
                params=[_SCHOOL_ID],
            ),
            "get": op(
                "A school's assets by asset tag",
                {
                    "200": reply("AssetPage"),
                    **problems(**AUTH_PROBLEMS, _400="invalid_parameter, invalid_cursor", _404=_SCHOOL_404),
                },
                auth=True,
                params=[_SCHOOL_ID, cursor, limit],
            ),
        },
        "/api/v1/schools/{school_id}/assets/{asset_id}": {
            "get": op(
                "One asset (ETag)",
                {
                    "200": reply("Asset"),
                    "304": {"description": "not modified"},
                    **problems(**AUTH_PROBLEMS, _400="invalid_id", _404=_SCHOOL_404 + "; asset_not_found"),
                },
                auth=True,
                params=[_SCHOOL_ID, _ASSET_ID],
            ),
            "patch": op(
                "Change an asset's tag, kind, make, model or year (If-Match)",
                {
                    "200": reply("Asset"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="invalid_id, malformed_json, validation_failed, invalid_precondition",
                        _403=forbidden,
                        _404=_SCHOOL_404 + "; asset_not_found",
                        _409="asset_tag_taken",
                        _412="precondition_failed",
                    ),
                },
                auth=True,
                body="AssetPatch",
                params=[_SCHOOL_ID, _ASSET_ID],
            ),
        },
        "/api/v1/schools/{school_id}/parts-requests": {
            "post": op(
                "Request parts for an asset (Idempotency-Key): each line's units are reserved from the"
                " school's region now if its policy allows, the rest backordered and reserved first come,"
                " first served as stock arrives",
                {
                    "201": {
                        **reply("PartsRequest", "made (status reserved or backordered), or replayed"),
                        "headers": {
                            "Idempotent-Replayed": {"schema": {"enum": ["true", "false"]}},
                            "Location": {"schema": {"type": "string"}},
                        },
                    },
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="idempotency_key_required, invalid_idempotency_key, malformed_json,"
                        " validation_failed (a line names a sku or a query, never both; a query needs a"
                        " category, attributes or fits_asset)",
                        _403=forbidden,
                        _404=_SCHOOL_404 + "; asset_not_found; product_not_found (line, sku);"
                        " fitting_product_not_found (line): no product of the query",
                        _409="product_discontinued (line, sku): it will not arrive",
                        _422="idempotency_key_reused: that key made a request of another body",
                    ),
                },
                auth=True,
                body="NewPartsRequest",
                params=[_SCHOOL_ID, _IDEMPOTENCY_KEY],
            ),
            "get": op(
                "A school's parts requests, newest first",
                {
                    "200": reply("PartsRequestPage"),
                    **problems(**AUTH_PROBLEMS, _400="invalid_parameter, invalid_cursor", _404=_SCHOOL_404),
                },
                auth=True,
                params=[
                    _SCHOOL_ID,
                    query("status", {"enum": _STATUSES}, "only this status"),
                    query("asset_id", _UUID, "only this asset's"),
                    query("needed_by_from", {"type": "string", "format": "date"}, "needed on or after"),
                    query("needed_by_to", {"type": "string", "format": "date"}, "needed on or before"),
                    cursor,
                    limit,
                ],
            ),
        },
        "/api/v1/schools/{school_id}/parts-requests/{request_id}": {
            "get": op(
                "One parts request (ETag: its version)",
                {
                    "200": reply("PartsRequest"),
                    "304": {"description": "not modified"},
                    **problems(
                        **AUTH_PROBLEMS, _400="invalid_id", _404=_SCHOOL_404 + "; parts_request_not_found"
                    ),
                },
                auth=True,
                params=[_SCHOOL_ID, _REQUEST_ID],
            ),
        },
        "/api/v1/schools/{school_id}/parts-requests/{request_id}/transitions": {
            "post": op(
                "Move a request on: picked, shipped (the supplier's: admin, service), delivered, cancelled"
                " (a school's key too). Shipped commits its units; cancelled releases them to whoever"
                " waits. Asking for its current status changes nothing. If-Match: the version read",
                {
                    "200": reply("PartsRequest"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="invalid_id, malformed_json, validation_failed, invalid_precondition",
                        _403=forbidden + "; transition_forbidden: picked and shipped are the supplier's",
                        _404=_SCHOOL_404 + "; parts_request_not_found",
                        _409="invalid_transition (current_status, requested_status, allowed)",
                        _412="precondition_failed: If-Match names an older version (expected, current)",
                    ),
                },
                auth=True,
                body="PartsTransition",
                params=[_SCHOOL_ID, _REQUEST_ID],
            ),
        },
    }


def parts_schemas() -> dict[str, Any]:
    line = {
        "type": "object",
        "properties": {
            "line": {"type": "integer"},
            "sku": {"type": "string", "description": "the product's (a query's: the one chosen)"},
            "query": {"type": ["object", "null"], "description": "the fitment query, as applied"},
            "product_id": _UUID,
            "quantity": {"type": "integer"},
            "reserved": {"type": "integer", "description": "units held for it now"},
            "backordered": {"type": "integer", "description": "units it waits for in the queue"},
        },
    }
    return {
        "School": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "region": {"type": "string"},
                "api_keys": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "the bound keys: the id of the first key of each one's rotations",
                },
                "created_at": _WHEN,
                "updated_at": _WHEN,
                "version": {"type": "integer"},
            },
        },
        "SchoolPage": _page("School"),
        "Asset": {
            "type": "object",
            "properties": {
                "id": _UUID,
                "school_id": {"type": "string"},
                "asset_tag": {"type": "string"},
                "kind": {"enum": ["vehicle", "equipment"]},
                "make": {"type": "string"},
                "model": {"type": "string"},
                "year": {"type": ["integer", "null"]},
                "created_at": _WHEN,
                "updated_at": _WHEN,
                "version": {"type": "integer"},
            },
        },
        "AssetPage": _page("Asset"),
        "PartsRequest": {
            "type": "object",
            "properties": {
                "id": _UUID,
                "school_id": {"type": "string"},
                "asset_id": _UUID,
                "region": {"type": "string"},
                "needed_by": {"type": "string", "format": "date"},
                "status": {"enum": _STATUSES},
                "policy": {"enum": ["all_or_none", "partial"]},
                "lines": {"type": "array", "items": line},
                "reservation_id": {"type": ["string", "null"], "description": "what it holds"},
                "created_by": {"type": "string"},
                "created_at": _WHEN,
                "updated_at": _WHEN,
                "version": {"type": "integer", "description": "+1 per change; each change is an event"},
            },
        },
        "PartsRequestPage": _page("PartsRequest"),
    }


def parts_request_bodies() -> dict[str, Any]:
    from hub.routes import parts_requests, schools  # (late: the routes import the document)
    from hub.validation import body_schema

    return {
        "NewSchool": body_schema(schools.SCHOOL_FIELDS),
        "SchoolPatch": body_schema(schools.SCHOOL_PATCH_FIELDS, partial=True),
        "NewAsset": body_schema(schools.ASSET_FIELDS),
        "AssetPatch": body_schema(schools.ASSET_FIELDS, partial=True),
        "NewPartsRequest": body_schema(parts_requests.REQUEST_FIELDS),
        "PartsTransition": body_schema(parts_requests.TRANSITION_FIELDS),
    }
