"""The builders every part of the OpenAPI document uses (``hub/openapi.py`` joins the parts): an
operation, a JSON reply, problem+json replies named by their codes, path and query parameters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PROBLEM = {"$ref": "#/components/responses/Problem"}
PROBLEM_CONTENT = {
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
}
# Every authenticated operation can answer these (docs/errors.md).
AUTH_PROBLEMS = {"_401": "unauthenticated, invalid_token, token_expired"}


def op(
    summary: str,
    responses: dict[str, Any],
    *,
    auth: bool = False,
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, "default": PROBLEM}}
    if auth:
        op["security"] = [{"bearer": []}]
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    if params:
        op["parameters"] = params
    return op


def reply(schema: str, description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def problems(**by_status: str) -> dict[str, Any]:
    """Error responses, ``_400="code_a, code_b: when"``: problem+json, described by their codes."""
    return {
        status.lstrip("_"): {"description": codes, **PROBLEM_CONTENT} for status, codes in by_status.items()
    }


# Path parameters the routes read as UUIDs (hub.validation.path_uuid: invalid_id otherwise) and the
# warehouse id's slug (hub.routes.inventory.SLUG).
_UUID_PARAMETERS = frozenset({"product_id", "reservation_id", "cart_id", "media_id", "review_id"})
_SLUG_PARAMETER = {
    "type": "string",
    "minLength": 1,
    "maxLength": 64,
    "pattern": "^[a-z0-9][a-z0-9\\-]{0,63}$",
}


REGION = {"type": "string", "minLength": 1, "maxLength": 32, "pattern": "^[a-z0-9][a-z0-9\\-]{0,31}$"}
# visible ASCII, as hub.routes.reservations.IDEMPOTENCY_KEY reads it
IDEMPOTENCY_KEY = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]{1,255}$"}


def comma_list(names: Iterable[str]) -> dict[str, Any]:
    """A query parameter that is a comma-separated list of some of ``names``."""
    one = "|".join(sorted(names))
    return {"type": "string", "pattern": f"^({one})(,({one}))*$"}


def path_param(name: str) -> dict[str, Any]:
    if name in _UUID_PARAMETERS:
        schema: dict[str, Any] = {"type": "string", "format": "uuid"}
    elif name == "warehouse_id":
        schema = _SLUG_PARAMETER
    else:
        schema = {"type": "string"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}
