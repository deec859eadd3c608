"""Who may call which route: one table, route name → the roles that may, enforced by one middleware
before any handler runs.

    PUBLIC        anyone, with or without a token (a token that is sent must be valid: hub/auth.py)
    roles         a token holding one of them (401 unauthenticated without a token, 403 forbidden
                  without the role)

The table says who may *reach* a route. What the caller may do there with a given resource — only a
cart's owner pushes to it, only a review's author edits it, a moderator reads unpublished reviews — is
the handler's, beside the resource it reads. ``tests/test_authz.py`` walks every registered route:
one missing from the table fails it, and every role outside a route's set is refused there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from hub.auth import require
from hub.errors import Forbidden

PUBLIC: frozenset[str] = frozenset()
CUSTOMER = frozenset({"customer"})
ADMIN = frozenset({"admin"})
MODERATION = frozenset({"moderator", "admin"})
ANY_USER = frozenset({"customer", "moderator", "admin", "service"})

TABLE: dict[str, frozenset[str]] = {
    # operations and documents
    "healthz": PUBLIC,
    "readyz": PUBLIC,
    "metrics": PUBLIC,
    "openapi": PUBLIC,
    # catalog and stock: read by anyone, written by admins
    "list_products": PUBLIC,
    "get_product": PUBLIC,
    "create_product": ADMIN,
    "update_product": ADMIN,
    "delete_product": ADMIN,
    "list_warehouses": PUBLIC,
    "get_warehouse": PUBLIC,
    "create_warehouse": ADMIN,
    "get_inventory": PUBLIC,
    "inventory_snapshot": PUBLIC,
    "set_stock": ADMIN,
    "adjust_stock": ADMIN,
    # reservations: any user; only the owner (or admin/service) reads and settles one
    "create_reservation": ANY_USER,
    "get_reservation": ANY_USER,
    "commit_reservation": ANY_USER,
    "release_reservation": ANY_USER,
    # carts: the owner's devices write; the owner, service and admin read
    "get_cart": ANY_USER,
    "sync_cart": CUSTOMER,
    "edit_cart": CUSTOMER,
    "checkout_cart": CUSTOMER,
    # media: customers upload; the signed URL is the read's credential
    "upload_media": CUSTOMER,
    "media_info": ANY_USER,
    "get_media": PUBLIC,
    # reviews: published ones are public; authors write; moderators decide
    "list_reviews": PUBLIC,
    "get_review": PUBLIC,
    "get_rating": PUBLIC,
    "create_review": CUSTOMER,
    "edit_review": CUSTOMER,
    "delete_review": frozenset({"customer", "admin"}),
    "sync_review": CUSTOMER,
    "vote_helpful": CUSTOMER,
    "report_review": CUSTOMER,
    "moderate_review": MODERATION,
    "moderation_queue": MODERATION,
    # real time: public channels need no token; private ones are checked per channel (channel_access)
    "create_ticket": ANY_USER,
    "websocket": PUBLIC,
    "sse": PUBLIC,
    "poll": PUBLIC,
}


def route_name(request: web.Request) -> str | None:
    """The route's name; a HEAD answered by a GET route's handler goes by that route's name."""
    route = request.match_info.route
    if route.name is not None or request.method != "HEAD" or route.resource is None:
        return route.name
    return next((r.name for r in route.resource if r.method == "GET"), None)


@web.middleware
async def authz_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    name = route_name(request)
    if name is None:  # aiohttp's own answers (404, 405): no handler of ours runs
        return await handler(request)
    roles = TABLE.get(name)
    if roles is None:
        # A route added without a row: refused rather than open (tests/test_authz.py catches it first).
        raise Forbidden(f"route {name} has no authorization rule", code="no_authorization_rule")
    if roles:
        require(request, *sorted(roles))
    return await handler(request)
