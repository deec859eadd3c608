"""The authorization table (hub/authz.py) against the app's routes: every route has a row, no row names a
route that is gone, every role outside a route's set is refused there before its handler runs, every API
key without one of a route's scopes too (and one with it is let through), and the OpenAPI document marks
as authenticated exactly the routes that need a role, and for API keys exactly the table's scopes."""

from __future__ import annotations

import re
import uuid

from hub.app import create_app
from hub.authz import PUBLIC, SCOPES, TABLE
from hub.openapi import openapi_document
from hub.settings import Settings
from tests.conftest import token

ROLES = ("customer", "moderator", "admin", "service")


def app_routes() -> list[tuple[str, str, str]]:
    """(method, path template, name) of every route the app answers (HEAD twins left out)."""
    app = create_app(Settings(jwt_secret="x" * 40))
    out = []
    for route in app.router.routes():
        if route.method == "HEAD" or route.name is None or route.resource is None:
            continue
        out.append((route.method, route.resource.canonical, route.name))
    return out


def test_every_route_has_a_row_and_every_row_a_route():
    names = {name for _, _, name in app_routes()}
    assert names - TABLE.keys() == set(), "routes with no authorization rule"
    assert TABLE.keys() - names == set(), "rules for routes that no longer exist"


def test_the_openapi_document_marks_exactly_the_routes_that_need_a_role():
    paths = openapi_document()["paths"]
    for method, path, name in app_routes():
        operation = paths[path][method.lower()]
        assert bool(operation.get("security")) == bool(TABLE[name].roles), (method, path, name)
        key_scopes = [s["apiKey"] for s in operation.get("security", []) if "apiKey" in s]
        assert key_scopes == ([sorted(TABLE[name].scopes)] if TABLE[name].scopes else []), (method, path)


def test_every_scope_in_the_table_is_one_a_key_may_be_given():
    named = {scope for rule in TABLE.values() for scope in rule.scopes}
    assert named <= SCOPES.keys()
    assert all(rule.roles for rule in TABLE.values() if rule.scopes), "a public route needs no scope"


def filled(path: str) -> str:
    return re.sub(
        r"\{[a-z_]+\}", lambda m: "par-1" if m.group(0) == "{warehouse_id}" else str(uuid.uuid4()), path
    )


async def test_every_role_outside_a_routes_set_is_refused_and_anonymous_callers_need_a_token(hub):
    checked = 0
    for method, path, name in app_routes():
        roles = TABLE[name].roles
        if TABLE[name] == PUBLIC:
            continue
        url = filled(path)
        status, body, _ = await hub.call(method, url, json={})
        assert (status, body["code"]) == (401, "unauthenticated"), (name, status, body)
        for role in ROLES:
            if role in roles:
                continue
            status, body, _ = await hub.call(method, url, token=token(f"who-{role}", role), json={})
            assert (status, body["code"]) == (403, "forbidden"), (name, role, status, body)
            checked += 1
    assert checked > 40


async def test_public_routes_answer_anonymous_callers_without_asking_for_a_token(hub):
    for method, path, name in app_routes():
        if TABLE[name] != PUBLIC or method != "GET":
            continue
        status, body, _ = await hub.call(method, filled(path))
        code = body.get("code") if isinstance(body, dict) else None
        # (a media URL's signature is its own credential: 403 invalid_signature is not a role refusal)
        assert code not in ("unauthenticated", "forbidden"), (name, status, body)


async def api_key(hub, *scopes: str) -> str:
    status, body, _ = await hub.call(
        "POST", "/api/v1/api-keys", token=hub.admin, json={"name": "authz", "scopes": sorted(scopes)}
    )
    assert status == 201, body
    return str(body["key"])


async def test_api_keys_reach_exactly_the_routes_of_their_scopes_and_the_public_ones(hub):
    """Every non-public route refuses a key holding every scope but its own (403 insufficient_scope,
    required_scopes naming them) and lets through a key holding one of them (whatever the handler then
    says of the request, it is not an authentication or authorization refusal); public routes take any
    valid key."""
    keys: dict[frozenset[str], str] = {}

    async def key_without(scopes: frozenset[str]) -> str:
        if scopes not in keys:
            keys[scopes] = await api_key(hub, *(SCOPES.keys() - scopes))
        return keys[scopes]

    refused = admitted = 0
    for method, path, name in app_routes():
        rule = TABLE[name]
        url = filled(path)
        if rule == PUBLIC:
            if method == "GET":
                status, body, _ = await hub.call(method, url, token=await key_without(frozenset()))
                code = body.get("code") if isinstance(body, dict) else None
                assert code not in ("unauthenticated", "forbidden", "insufficient_scope"), (name, body)
            continue
        status, body, _ = await hub.call(method, url, token=await key_without(rule.scopes), json={})
        assert (status, body["code"]) == (403, "insufficient_scope"), (name, status, body)
        assert body["required_scopes"] == sorted(rule.scopes), name
        refused += 1
        for scope in sorted(rule.scopes):
            only = frozenset({"only", scope})
            if only not in keys:
                keys[only] = await api_key(hub, scope)
            scoped = keys[only]
            status, body, _ = await hub.call(method, url, token=scoped, json={})
            code = body.get("code") if isinstance(body, dict) else None
            assert status not in (401, 403) or code not in (
                "unauthenticated",
                "forbidden",
                "insufficient_scope",
            ), (name, scope, status, body)
            admitted += 1
    assert refused > 20 and admitted >= 10  # (the app really has such routes)
