"""/api/v1/products: the catalog."""

from __future__ import annotations

import base64
import binascii
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from hub.auth import require
from hub.errors import BadRequest, NotFoundError
from hub.fitment import query_filters
from hub.keys import STORE
from hub.responses import (
    content_etag,
    dumps,
    expected_version,
    iso,
    json_response,
    not_modified,
)
from hub.routes.inventory import REGION_PATTERN
from hub.validation import (
    Field,
    FieldError,
    choice,
    decimal,
    integer,
    json_object,
    path_uuid,
    query_choice,
    query_decimal,
    query_int,
    query_text,
    read_json,
    string,
    uuid_string,
    validate,
)
from storage.models import SORTS, NewProduct, Product, ProductQuery, ProductStatus
from storage.sql_reviews import render_aggregate

routes = web.RouteTableDef()

SKU_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}"
CATEGORY = string(0, 64, r"[A-Za-z0-9._\-]*")
REGION = string(1, 32, REGION_PATTERN)
PRICE = decimal(Decimal(0), Decimal("1000000000"), 4)
PRODUCT_FIELDS = {
    "sku": Field(string(1, 64, SKU_PATTERN), required=True),
    "name": Field(string(1, 200), required=True),
    "description": Field(string(0, 5000)),
    "category": Field(CATEGORY),
    "price": Field(PRICE, required=True),
    "status": Field(choice(*(s.value for s in ProductStatus))),
    "attributes": Field(json_object()),
    "low_stock_threshold": Field(integer(0, 1_000_000)),
}
VISIBLE_FIELDS = frozenset(
    {
        "id",
        "sku",
        "name",
        "description",
        "category",
        "price",
        "status",
        "attributes",
        "low_stock_threshold",
        "created_at",
        "updated_at",
        "version",
        "rating",
        "links",
    }
)
MAX_PAGE = 200
MIN_RATING = decimal(Decimal(1), Decimal(5), 2)


def product_to_dict(product: Product) -> dict[str, Any]:
    return {
        "id": product.id,
        "sku": product.sku,
        "name": product.name,
        "description": product.description,
        "category": product.category,
        "price": str(product.price),
        "status": product.status.value,
        "attributes": product.attributes,
        "low_stock_threshold": product.low_stock_threshold,
        "created_at": iso(product.created_at),
        "updated_at": iso(product.updated_at),
        "version": product.version,
        "rating": render_aggregate(product.rating),
        "links": {"reviews": f"/api/v1/products/{product.id}/reviews"},
    }


def product_etag(product: Product) -> str:
    """The product's version and its rating's: a representation changes with either. If-Match reads
    the first (the rating changes with reviews, and never conflicts with an edit of the product)."""
    return f'"{product.version}-{product.rating_version}"'


def sparse_fields(request: web.Request) -> frozenset[str] | None:
    raw = request.query.get("fields")
    if raw is None:
        return None
    names = frozenset(n.strip() for n in raw.split(",") if n.strip())
    unknown = names - VISIBLE_FIELDS
    if unknown or not names:
        raise BadRequest(
            f"fields must name some of {', '.join(sorted(VISIBLE_FIELDS))}",
            code="invalid_parameter",
            parameter="fields",
            unknown=sorted(unknown),
        )
    return names | {"id"}


def shaped(product: Product, fields: frozenset[str] | None) -> dict[str, Any]:
    body = product_to_dict(product)
    return body if fields is None else {k: v for k, v in body.items() if k in fields}


def encode_cursor(sort: str, after: tuple[Any, str]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([sort, after[0], after[1]])).decode().rstrip("=")


def decode_cursor(raw: str, sort: str) -> tuple[Any, str]:
    try:
        padded = raw + "=" * (-len(raw) % 4)
        decoded = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
        raise BadRequest("the cursor is not one this server issued", code="invalid_cursor") from exc
    if not isinstance(decoded, list) or len(decoded) != 3 or decoded[0] != sort:
        raise BadRequest(
            "the cursor does not belong to this sort order; start again without a cursor",
            code="invalid_cursor",
        )
    value, last_id = decoded[1], decoded[2]
    try:
        uuid_string(last_id)
        if isinstance(value, str):
            string(0, 200)(value)
    except FieldError as exc:
        raise BadRequest("the cursor is not one this server issued", code="invalid_cursor") from exc
    return value, last_id


@routes.get("/api/v1/products", name="list_products")
async def list_products(request: web.Request) -> web.StreamResponse:
    sort = query_choice(request, "sort", SORTS) or "newest"
    status = query_choice(request, "status", frozenset(s.value for s in ProductStatus))
    category = query_text(request, "category", CATEGORY)
    region = query_text(request, "in_stock_region", REGION)
    limit = query_int(request, "limit", 50, 1, MAX_PAGE)
    fields = sparse_fields(request)
    cursor = request.query.get("cursor")
    query = ProductQuery(
        limit=limit,
        category=category,
        status=ProductStatus(status) if status else None,
        price_min=query_decimal(request, "price_min", PRICE),
        price_max=query_decimal(request, "price_max", PRICE),
        min_rating=query_decimal(request, "min_rating", MIN_RATING),
        in_stock_region=region,
        attributes=query_filters(request),
        sort=sort,
        after=decode_cursor(cursor, sort) if cursor else None,
    )
    try:
        page = await request.app[STORE].list_products(query)
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_cursor") from exc
    next_cursor = encode_cursor(sort, page.next_after) if page.next_after else None
    body = {"items": [shaped(p, fields) for p in page.items], "next_cursor": next_cursor}
    payload = dumps(body)
    etag = content_etag(payload)
    if not_modified(request, etag):
        return web.Response(status=304, headers={"ETag": etag})
    response = web.Response(body=payload, content_type="application/json", headers={"ETag": etag})
    if next_cursor:
        params = {k: v for k, v in request.query.items() if k != "cursor"}
        params["cursor"] = next_cursor
        response.headers["Link"] = f'<{request.path}?{urlencode(params)}>; rel="next"'
    return response


@routes.post("/api/v1/products", name="create_product")
async def create_product(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    data = validate(await read_json(request), PRODUCT_FIELDS)
    if "status" in data:
        data["status"] = ProductStatus(data["status"])
    product = await request.app[STORE].create_product(NewProduct(**data))
    return json_response(
        product_to_dict(product),
        status=201,
        etag=product_etag(product),
        headers={"Location": f"/api/v1/products/{product.id}"},
    )


@routes.get("/api/v1/products/{product_id}", name="get_product")
async def get_product(request: web.Request) -> web.StreamResponse:
    product_id = path_uuid(request, "product_id")
    fields = sparse_fields(request)
    product = await request.app[STORE].get_product(product_id)
    if product is None:
        raise NotFoundError("no such product", code="product_not_found", product_id=product_id)
    etag = product_etag(product)
    if not_modified(request, etag):
        return web.Response(status=304, headers={"ETag": etag})
    return json_response(shaped(product, fields), etag=etag)


@routes.patch("/api/v1/products/{product_id}", name="update_product")
async def update_product(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    product_id = path_uuid(request, "product_id")
    version = expected_version(request)
    changes = validate(await read_json(request), PRODUCT_FIELDS, partial=True)
    if not changes:
        raise BadRequest("the patch changes nothing", code="validation_failed")
    product = await request.app[STORE].update_product(product_id, changes, version)
    return json_response(product_to_dict(product), etag=product_etag(product))


@routes.delete("/api/v1/products/{product_id}", name="delete_product")
async def delete_product(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    product_id = path_uuid(request, "product_id")
    await request.app[STORE].delete_product(product_id, expected_version(request))
    return web.Response(status=204)
