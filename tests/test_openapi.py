"""The OpenAPI document describes exactly the routes the app serves."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from hub.openapi import openapi_document

DOC = "/api/v1/openapi.json"
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def app_operations(app: web.Application) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue  # added by aiohttp for every GET
        resource = route.resource
        assert resource is not None
        found.add((resource.canonical, route.method.lower()))
    return found


def doc_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item if method in METHODS}


async def fetch(hub: Any) -> dict[str, Any]:
    status, doc, headers = await hub.call("GET", DOC)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    return dict(doc)


async def test_the_document_is_openapi_3_1(hub):
    doc = await fetch(hub)
    assert re.fullmatch(r"3\.1\.\d+", doc["openapi"])
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["paths"]


async def test_every_route_of_the_app_is_in_the_document(hub):
    doc = await fetch(hub)
    routes = app_operations(hub.app)
    assert len(routes) >= 17  # the app really registered its routes
    missing = routes - doc_operations(doc)
    assert not missing, f"routes without documentation: {sorted(missing)}"


async def test_every_operation_in_the_document_exists_in_the_app(hub):
    doc = await fetch(hub)
    phantom = doc_operations(doc) - app_operations(hub.app)
    assert not phantom, f"documented but not served: {sorted(phantom)}"


async def test_every_documented_operation_answers_something_other_than_404_or_405(hub):
    # A path template in the document is one the router really matches (not just the same string).
    doc = await fetch(hub)
    for path, method in sorted(doc_operations(doc)):
        concrete = re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000000", path)
        status, body, _ = await hub.call(method.upper(), concrete, token=hub.admin, json={})
        assert status != 405, (method, path, body)
        if status == 404:
            assert body["code"] != "not_found", (method, path, body)  # a resource 404, not a routing one


async def test_path_parameters_match_the_path_templates(hub):
    doc = await fetch(hub)
    for path, item in doc["paths"].items():
        names = set(re.findall(r"\{([^}]+)\}", path))
        for method, op in item.items():
            if method not in METHODS:
                continue
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (method, path)
            assert all(p["required"] for p in op.get("parameters", []) if p["in"] == "path")


async def test_every_reference_resolves(hub):
    doc = await fetch(hub)

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    all_refs = refs(doc)
    assert all_refs
    for ref in all_refs:
        assert ref.startswith("#/"), ref
        target: Any = doc
        for part in ref[2:].split("/"):
            assert isinstance(target, dict) and part in target, f"dangling $ref {ref}"
            target = target[part]


async def test_every_operation_documents_responses_and_writes_declare_security(hub):
    doc = await fetch(hub)
    schemes = doc["components"]["securitySchemes"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            assert op["responses"], (method, path)
            assert any(code.startswith("2") or code == "101" for code in op["responses"]), (method, path)
            if method != "get" or path.startswith("/api/v1/reservations"):
                assert op.get("security"), f"{method} {path} needs a token but says not"
                for requirement in op["security"]:
                    assert set(requirement) <= set(schemes)


def test_the_document_is_as_strict_as_the_server_where_the_probe_found_it_loose():
    """Found when the hub was probed (issue 15): ids not declared as UUIDs, lengths and patterns
    missing, ``delta: 0`` allowed. Bodies now come from the routes' own fields (hub/validation.py);
    tests/test_schemathesis.py checks the whole document against a running hub both ways."""
    document = openapi_document()
    schemas = document["components"]["schemas"]
    adjust = schemas["AdjustStock"]["properties"]["delta"]
    assert adjust["not"] == {"const": 0} and adjust["minimum"] < 0 < adjust["maximum"]
    product = document["paths"]["/api/v1/products/{product_id}"]["get"]["parameters"]
    assert {"type": "string", "format": "uuid"} in [p["schema"] for p in product if p["name"] == "product_id"]
    sku = schemas["NewProduct"]["properties"]["sku"]
    assert (sku["minLength"], sku["maxLength"]) == (1, 64) and sku["pattern"].startswith("^")
    assert schemas["NewProduct"]["additionalProperties"] is False
    assert schemas["ProductPatch"]["minProperties"] == 1
    line = schemas["NewReservation"]["properties"]["lines"]["items"]
    assert {"not": {"required": ["region", "warehouse_id"]}} in line["allOf"]


def test_each_sync_schema_names_its_own_document_type():
    # A review's sync carried the cart's delta schema ("t": "cart") until the document was split by
    # concern: a client generated from it would have sent deltas the hub refuses.
    from crdt.cart import Cart
    from crdt.codec import to_dict
    from crdt.review import Review

    schemas = openapi_document()["components"]["schemas"]

    def pushed_tag(sync: str) -> Any:
        return schemas[sync]["properties"]["pushes"]["items"]["properties"]["delta"]["properties"]["t"][
            "const"
        ]

    assert pushed_tag("CartSync") == to_dict(Cart.new())["t"] == "cart"
    assert pushed_tag("ReviewSync") == to_dict(Review.new())["t"] == "review"
    assert (
        schemas["ReviewSyncReply"]["properties"]["state"]["oneOf"][0]["properties"]["t"]["const"] == "review"
    )
    review_ack_code = schemas["ReviewSyncReply"]["properties"]["acks"]["items"]["properties"]["code"]
    assert "text_too_long" in review_ack_code["description"]
    assert "text_too_long" not in schemas["CartAck"]["properties"]["code"]["enum"]
