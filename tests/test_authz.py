"""The authorization table (hub/authz.py) against the app's routes: every route has a row, no row names a
route that is gone, every role outside a route's set is refused there before its handler runs, and the
OpenAPI document marks as authenticated exactly the routes that need a role."""

from __future__ import annotations

import re
import uuid

from hub.app import create_app
from hub.authz import PUBLIC, TABLE
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
        assert bool(operation.get("security")) == bool(TABLE[name]), (method, path, name)


def filled(path: str) -> str:
    return re.sub(
        r"\{[a-z_]+\}", lambda m: "par-1" if m.group(0) == "{warehouse_id}" else str(uuid.uuid4()), path
    )


async def test_every_role_outside_a_routes_set_is_refused_and_anonymous_callers_need_a_token(hub):
    checked = 0
    for method, path, name in app_routes():
        roles = TABLE[name]
        if roles == PUBLIC:
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
