"""Who may call which route: one table, route name → the roles that may and the scopes that let an
API key, enforced before any handler runs (:func:`authorize`, from hub/access.py's middleware).

    PUBLIC        anyone, with or without a token (a token that is sent must be valid: hub/auth.py),
                  API keys included
    roles         a token holding one of them (401 unauthenticated without a token, 403 forbidden
                  without the role)
    .or_key(s…)   and an API key holding one of these scopes (hub/api_keys.py: keys hold scopes, never
                  roles). A key reaches no other route: 403 insufficient_scope, required_scopes
                  naming what would do

The table says who may *reach* a route. What the caller may do there with a given resource — only a
cart's owner pushes to it, only a review's author edits it, a moderator reads unpublished reviews — is
the handler's, beside the resource it reads. ``tests/test_authz.py`` walks every registered route:
one missing from the table fails it, every role outside a route's set is refused there, and so is every
API key without one of the route's scopes.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from hub.auth import Principal, principal, require
from hub.errors import Forbidden
from hub.keys import GRANTED_SCOPE

# What an API key may be given (docs/security.md, "API keys"). Scopes that no row names yet are for the
# routes of features to come; a key may hold them already.
SCOPES: dict[str, str] = {
    "catalog:write": "create, update and delete products; create warehouses",
    "inventory:write": "set and adjust stock",
    "reservations:read": "read the key's own reservations",
    "reservations:write": "make, read, commit and release the key's own reservations",
    "parts-requests:write": "the schools the key is bound to: their assets and parts requests (make, read,"
    " cancel, confirm delivery), their parts-requests: channel",
    "webhooks:manage": "the key's own webhook endpoints: make, read, change, delete, test and replay them,"
    " read their delivery log and dead letters",
}


@dataclass(frozen=True, slots=True)
class Rule:
    """Tokens holding one of ``roles`` may reach the route (none: anyone may), and API keys holding
    one of ``scopes``."""

    roles: frozenset[str]
    scopes: frozenset[str] = frozenset()

    def or_key(self, *scopes: str) -> Rule:
        return Rule(self.roles, self.scopes | frozenset(scopes))

    def admit_key(self, who: Principal) -> str:
        """The scope by which the API key ``who`` may reach the route, or 403 insufficient_scope."""
        granted = sorted(who.scopes & self.scopes)
        if granted:
            return granted[0]
        wanted = " ".join(sorted(self.scopes))
        raise Forbidden(
            f"this API key needs the scope {' or '.join(sorted(self.scopes))}"
            if self.scopes
            else "API keys may not call this operation: it needs a user's token",
            code="insufficient_scope",
            required_scopes=sorted(self.scopes),
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{wanted}"'},
        )


PUBLIC = Rule(frozenset())
CUSTOMER = Rule(frozenset({"customer"}))
ADMIN = Rule(frozenset({"admin"}))
MODERATION = Rule(frozenset({"moderator", "admin"}))
ANY_USER = Rule(frozenset({"customer", "moderator", "admin", "service"}))
PERSON = Rule(frozenset({"customer", "moderator", "admin"}))  # a person's token: services have no profile
SUPPLIER = Rule(frozenset({"admin", "service"}))  # the parts supplier's own people and systems

TABLE: dict[str, Rule] = {
    # operations and documents
    "healthz": PUBLIC,
    "readyz": PUBLIC,
    "metrics": PUBLIC,
    "openapi": PUBLIC,
    # the hub's own pages (hub/routes/home.py): the live stock page, the API reader, their files
    "home": PUBLIC,
    "api_docs": PUBLIC,
    "home_js": PUBLIC,
    "api_docs_js": PUBLIC,
    "page_css": PUBLIC,
    "favicon": PUBLIC,
    "favicon_ico": PUBLIC,
    "protocol_doc": PUBLIC,
    # catalog and stock: read by anyone, written by admins
    "list_products": PUBLIC,
    "get_product": PUBLIC,
    "create_product": ADMIN.or_key("catalog:write"),
    "update_product": ADMIN.or_key("catalog:write"),
    "delete_product": ADMIN.or_key("catalog:write"),
    "list_warehouses": PUBLIC,
    "get_warehouse": PUBLIC,
    "create_warehouse": ADMIN.or_key("catalog:write"),
    "get_inventory": PUBLIC,
    "inventory_snapshot": PUBLIC,
    "set_stock": ADMIN.or_key("inventory:write"),
    "adjust_stock": ADMIN.or_key("inventory:write"),
    # reservations: any user; only the owner (or admin/service) reads and settles one
    "create_reservation": ANY_USER.or_key("reservations:write"),
    "get_reservation": ANY_USER.or_key("reservations:read", "reservations:write"),
    "list_reservations": ANY_USER.or_key("reservations:read", "reservations:write"),
    "commit_reservation": ANY_USER.or_key("reservations:write"),
    "release_reservation": ANY_USER.or_key("reservations:write"),
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
    "delete_review": Rule(frozenset({"customer", "admin"})),
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
    # API keys: made, read, revoked and rotated by admins (never by a key)
    "create_api_key": ADMIN,
    "list_api_keys": ADMIN,
    "get_api_key": ADMIN,
    "revoke_api_key": ADMIN,
    "rotate_api_key": ADMIN,
    # personal data: a person's own profile, export and erasure; any user's for admins; the audit log
    "get_me": PERSON,
    "put_me": PERSON,
    "export_me": PERSON,
    "erase_me": PERSON,
    "export_user": ADMIN,
    "erase_user": ADMIN,
    "list_audit": ADMIN,
    # webhooks: an API key manages its own endpoints, an admin every one (hub/routes/webhooks.py)
    "create_webhook": ADMIN.or_key("webhooks:manage"),
    "list_webhooks": ADMIN.or_key("webhooks:manage"),
    "get_webhook": ADMIN.or_key("webhooks:manage"),
    "update_webhook": ADMIN.or_key("webhooks:manage"),
    "delete_webhook": ADMIN.or_key("webhooks:manage"),
    "test_webhook": ADMIN.or_key("webhooks:manage"),
    "rotate_webhook_secret": ADMIN.or_key("webhooks:manage"),
    "replay_webhook": ADMIN.or_key("webhooks:manage"),
    "list_webhook_deliveries": ADMIN.or_key("webhooks:manage"),
    "list_webhook_dead_letters": ADMIN.or_key("webhooks:manage"),
    # schools' parts requests (hub/schools.py): the supplier's admin and service tokens reach every school,
    # a school platform's API key the schools it is bound to; admins make schools and bind their keys
    "create_school": ADMIN,
    "update_school": ADMIN,
    "list_schools": SUPPLIER.or_key("parts-requests:write"),
    "get_school": SUPPLIER.or_key("parts-requests:write"),
    "create_asset": SUPPLIER.or_key("parts-requests:write"),
    "list_assets": SUPPLIER.or_key("parts-requests:write"),
    "get_asset": SUPPLIER.or_key("parts-requests:write"),
    "update_asset": SUPPLIER.or_key("parts-requests:write"),
    "create_parts_request": SUPPLIER.or_key("parts-requests:write"),
    "list_parts_requests": SUPPLIER.or_key("parts-requests:write"),
    "get_parts_request": SUPPLIER.or_key("parts-requests:write"),
    "transition_parts_request": SUPPLIER.or_key("parts-requests:write"),
    # personalization: a shopper's own behaviour events, consent and recommendations
    "post_events": CUSTOMER,
    "get_consent": CUSTOMER,
    "put_consent": CUSTOMER,
    "get_recommendations": CUSTOMER,
}


def route_name(request: web.Request) -> str | None:
    """The route's name; a HEAD answered by a GET route's handler goes by that route's name."""
    route = request.match_info.route
    if route.name is not None or request.method != "HEAD" or route.resource is None:
        return route.name
    return next((r.name for r in route.resource if r.method == "GET"), None)


def authorize(request: web.Request, name: str) -> None:
    """Raise unless the caller may reach the route ``name`` (hub/access.py calls it for every matched
    route, after its rate limit)."""
    rule = TABLE.get(name)
    if rule is None:
        # A route added without a row: refused rather than open (tests/test_authz.py catches it first).
        raise Forbidden(f"route {name} has no authorization rule", code="no_authorization_rule")
    if rule.roles:
        who = principal(request)
        if who is not None and who.api_key_id is not None:
            request[GRANTED_SCOPE] = rule.admit_key(who)
        else:
            require(request, *sorted(rule.roles))
