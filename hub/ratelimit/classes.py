"""Which limit each route counts against, by its aiohttp route name (``name=`` in hub/routes/*.py and
hub/transports/*.py). Every named route is in :data:`ROUTE_CLASSES` or in :data:`UNLIMITED`
(tests/test_ratelimit_http.py checks it, so a new route cannot go unlimited by oversight)."""

from __future__ import annotations

import enum


class RouteClass(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    RESERVATION = "reservation"
    REVIEW_POST = "review_post"
    SYNC_PUSH = "sync_push"


ROUTE_CLASSES: dict[str, RouteClass] = {
    # Reads: the catalog, stock, carts, reviews, media; opening a real-time connection (its ticket,
    # then the upgrade or the event stream, cost what reads do; how many stay open is capped apart:
    # connections.py) and each long-poll.
    **dict.fromkeys(
        (
            "list_products",
            "get_product",
            "list_warehouses",
            "get_warehouse",
            "get_inventory",
            "inventory_snapshot",
            "get_reservation",
            "list_reservations",
            "get_cart",
            "get_review",
            "list_reviews",
            "get_rating",
            "moderation_queue",
            "media_info",
            "get_media",
            "create_ticket",
            "websocket",
            "sse",
            "poll",
            "list_api_keys",
            "get_api_key",
            # the hub's pages and their files (hub/routes/home.py): a page load is 3 of these, revalidated
            "home",
            "api_docs",
            "home_js",
            "api_docs_js",
            "page_css",
            "favicon",
            "favicon_ico",
            "protocol_doc",
        ),
        RouteClass.READ,
    ),
    # Writes: the catalog and stock (admins), uploads, votes, reports, moderation, deleting a review.
    **dict.fromkeys(
        (
            "create_product",
            "update_product",
            "delete_product",
            "create_warehouse",
            "set_stock",
            "adjust_stock",
            "upload_media",
            "vote_helpful",
            "report_review",
            "moderate_review",
            "delete_review",
            "create_api_key",
            "revoke_api_key",
            "rotate_api_key",
        ),
        RouteClass.WRITE,
    ),
    # Reservations hold stock others could buy: a checkout reserves too.
    **dict.fromkeys(
        ("create_reservation", "commit_reservation", "release_reservation", "checkout_cart"),
        RouteClass.RESERVATION,
    ),
    # New or changed review text: what spam is made of (each is also screened and moderated).
    **dict.fromkeys(("create_review", "edit_review"), RouteClass.REVIEW_POST),
    # Devices' deltas and plain edits of carts and reviews.
    **dict.fromkeys(("sync_cart", "edit_cart", "sync_review"), RouteClass.SYNC_PUSH),
    # A person's data and the audit log: an export is one read, however large; a profile's write and an
    # erasure (rare, and idempotent) are writes.
    **dict.fromkeys(("get_me", "export_me", "export_user", "list_audit"), RouteClass.READ),
    **dict.fromkeys(("put_me", "erase_me", "erase_user"), RouteClass.WRITE),
    # Personalization: a batch of behaviour events is a device's queue flushed, as a sync push is (one
    # carries up to 100 events); recommendations and consent are read with a page, consent seldom set.
    "post_events": RouteClass.SYNC_PUSH,
    **dict.fromkeys(("get_recommendations", "get_consent"), RouteClass.READ),
    "put_consent": RouteClass.WRITE,
    # Webhooks: reading endpoints and their logs; changing them, and a ping or a replay (each sends
    # requests to the partner's server, a replay possibly many) are writes.
    **dict.fromkeys(
        ("list_webhooks", "get_webhook", "list_webhook_deliveries", "list_webhook_dead_letters"),
        RouteClass.READ,
    ),
    **dict.fromkeys(
        (
            "create_webhook",
            "update_webhook",
            "delete_webhook",
            "rotate_webhook_secret",
            "test_webhook",
            "replay_webhook",
        ),
        RouteClass.WRITE,
    ),
    # Schools and their assets: reads and admins' or platforms' writes; a parts request and its transitions
    # hold and release stock as reservations do.
    **dict.fromkeys(
        (
            "list_schools",
            "get_school",
            "list_assets",
            "get_asset",
            "list_parts_requests",
            "get_parts_request",
        ),
        RouteClass.READ,
    ),
    **dict.fromkeys(("create_school", "update_school", "create_asset", "update_asset"), RouteClass.WRITE),
    **dict.fromkeys(("create_parts_request", "transition_parts_request"), RouteClass.RESERVATION),
}

# Operations: probes and scrapers must always get an answer.
UNLIMITED = frozenset({"healthz", "readyz", "metrics", "openapi"})
