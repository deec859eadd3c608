"""The OpenAPI paths and schemas of reviews and of real-time tickets (``hub/openapi.py`` joins them)."""

from __future__ import annotations

from typing import Any

from hub.openapi_build import AUTH_PROBLEMS, op, path_param, problems, query, reply

_STATUS_NAMES = "pending|published|flagged|rejected|deleted|erased"  # storage.reviews.ReviewStatus
_STATUSES = {"type": "string", "pattern": f"^({_STATUS_NAMES})(,({_STATUS_NAMES}))*$"}

_RATING = {"type": "integer", "minimum": 1, "maximum": 5}
_TEXT = {"type": "string", "maxLength": 5000, "description": "plain text, never HTML; no lone surrogates"}
_MEDIA_IDS = {"type": "array", "maxItems": 10, "items": {"type": "string", "format": "uuid"}}
_AGGREGATE = {
    "type": "object",
    "description": "the product's published reviews: count, average (null when none), stars 1-5",
    "properties": {
        "count": {"type": "integer"},
        "average": {"type": ["number", "null"]},
        "histogram": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
}
# What a review push's ack may be refused with (storage/sql_review_checks.py; docs/errors.md).
_PUSH_REFUSALS = (
    "foreign_replica, clock_skew, unknown_media, text_too_long, too_many_media, moderation_forbidden,"
    " wrong_review, wrong_author, not_created, invalid_edit, review_gone, review_exists, product_not_found"
)
_WRITE_REFUSALS = (
    "the write was refused, nothing changed: unknown_media, foreign_replica, clock_skew, text_too_long,"
    " too_many_media, moderation_forbidden, wrong_review, wrong_author, not_created, invalid_edit"
)


def review_paths() -> dict[str, Any]:
    product_id, review_id = path_param("product_id"), path_param("review_id")
    listing_params = [
        query("sort", {"enum": ["newest", "highest", "lowest", "helpful"]}, "order (default newest)"),
        query("min_rating", _RATING, "at least this many stars"),
        query("max_rating", _RATING, "at most this many stars"),
        query("with_media", {"enum": ["true", "false"]}, "with or without media"),
        query("author", {"type": "string", "minLength": 1, "maxLength": 200}, "one author's"),
        query("q", {"type": "string", "maxLength": 200}, "full-text search: every word in the text"),
        query("status", _STATUSES, "moderators: a comma-separated list of statuses"),
        query("cursor", {"type": "string"}, "next_cursor of the previous page"),
        query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "page size (default 20)"),
    ]
    return {
        "/api/v1/products/{product_id}/reviews": {
            "post": op(
                "Post a review (customer): judged by the automatic screen, published or held for a"
                " moderator in the same transaction that moves the product's rating",
                {
                    "201": reply("Review", "created (status: published, pending or rejected)"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="malformed_json, validation_failed (rating 1-5 integer, text ≤ 5,000"
                        " characters of valid Unicode, at most 10 media ids, no unknown field), invalid_id",
                        _403="forbidden: needs the customer role",
                        _404="product_not_found",
                        _409="review_exists: one live review per product and author (review_id names it)",
                        _413="body_too_large",
                        _415="unsupported_media_type",
                        _422=_WRITE_REFUSALS,
                    ),
                },
                auth=True,
                body="NewReview",
                params=[product_id],
            ),
            "get": op(
                "List a product's reviews (published; moderators may ask for other statuses)",
                {
                    "200": reply("ReviewPage"),
                    **problems(
                        _400="invalid_id, invalid_sort, invalid_parameter, invalid_cursor",
                        _403="forbidden: status= is for moderators",
                        _404="product_not_found",
                    ),
                },
                params=[product_id, *listing_params],
            ),
        },
        "/api/v1/products/{product_id}/rating": {
            "get": op(
                "A product's rating aggregate (exact: changed with every review's status or rating)",
                {"200": reply("ProductRating"), **problems(_400="invalid_id", _404="product_not_found")},
                params=[product_id],
            ),
        },
        "/api/v1/reviews/{review_id}": {
            "get": op(
                "Read a review: published ones are anyone's; others their author's and moderators'"
                " (ETag, If-None-Match)",
                {
                    "200": reply("Review"),
                    "304": {"description": "not modified"},
                    **problems(_400="invalid_id", _404="review_not_found"),
                },
                params=[review_id],
            ),
            "patch": op(
                "The author's edit (a delta the hub mints): judged again, so a published review may go"
                " back to pending. Idempotency-Key makes a retry apply once",
                {
                    "200": reply("Review"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="malformed_json, validation_failed, invalid_id, invalid_idempotency_key",
                        _403="not_author, forbidden",
                        _404="review_not_found",
                        _409="review_gone: deleted or erased",
                        _422=_WRITE_REFUSALS,
                    ),
                },
                auth=True,
                body="ReviewEdit",
                params=[review_id],
            ),
            "delete": op(
                "Delete (the author) or, with ?erase=true, erase the content for good (the author or an"
                " admin): final, and no offline device can bring it back",
                {
                    "204": {"description": "deleted or erased"},
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="invalid_id, invalid_parameter",
                        _403="not_author, forbidden",
                        _404="review_not_found",
                        _409="review_gone",
                    ),
                },
                auth=True,
                params=[review_id, query("erase", {"enum": ["true", "false"]}, "erase the content")],
            ),
        },
        "/api/v1/reviews/{review_id}/sync": {
            "post": op(
                "Sync a device (the author): merge its pushed deltas (the first may create the review),"
                " each acknowledged once committed, and answer the state it lacks",
                {
                    "200": reply("ReviewSyncReply"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="malformed_json, validation_failed, invalid_id, malformed_context, bad_request,"
                        " invalid_mutation_id, malformed_delta, unsupported_codec_version, delta_too_large",
                        _403="forbidden: needs the customer role",
                        _404="review_not_found: another user's review",
                        _422="unknown_media",
                    ),
                },
                auth=True,
                body="ReviewSync",
                params=[review_id],
            ),
        },
        "/api/v1/reviews/{review_id}/helpful": {
            "post": op(
                "Vote a published review helpful (once per user; not one's own)",
                {
                    "200": reply("HelpfulVote"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="invalid_id",
                        _403="forbidden",
                        _404="review_not_found",
                        _409="own_review",
                    ),
                },
                auth=True,
                params=[review_id],
            ),
        },
        "/api/v1/reviews/{review_id}/reports": {
            "post": op(
                "Report a published review (once per user); enough reports flag it for a moderator",
                {
                    "202": reply("ReportReceipt"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="malformed_json, validation_failed, invalid_id",
                        _403="forbidden",
                        _404="review_not_found",
                    ),
                },
                auth=True,
                body="ReviewReport",
                params=[review_id],
            ),
        },
        "/api/v1/reviews/{review_id}/moderation": {
            "post": op(
                "A moderator's decision (publish, reject with a reason, flag), written by the hub in the"
                " review's own moderation sequence; with version, only on the version the moderator read",
                {
                    "200": reply("Review"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="malformed_json, validation_failed, invalid_id, reason_required",
                        _403="forbidden: needs the moderator or admin role",
                        _404="review_not_found",
                        _409="review_gone",
                        _412="precondition_failed: the review changed since that version",
                    ),
                },
                auth=True,
                body="ModerationDecision",
                params=[review_id],
            ),
        },
        "/api/v1/realtime/tickets": {
            "post": op(
                "A ticket for a browser's EventSource or WebSocket (?ticket=): good for 30 s and one"
                " connection, on any node, as the token's user; tokens in URLs are refused by default",
                {
                    "201": reply("RealtimeTicket", "issued"),
                    **problems(**AUTH_PROBLEMS),
                },
                auth=True,
            ),
        },
        "/api/v1/moderation/queue": {
            "get": op(
                "The moderation queue: pending and flagged reviews (or status=), oldest change first",
                {
                    "200": reply("ReviewPage"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="invalid_parameter, invalid_cursor",
                        _403="forbidden: needs the moderator or admin role",
                    ),
                },
                auth=True,
                params=[
                    query("status", _STATUSES, "comma-separated statuses (default pending,flagged)"),
                    query("product_id", {"type": "string", "format": "uuid"}, "one product's"),
                    query("author", {"type": "string", "minLength": 1, "maxLength": 200}, "one author's"),
                    query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                    query(
                        "limit", {"type": "integer", "minimum": 1, "maximum": 100}, "page size (default 50)"
                    ),
                ],
            ),
        },
    }


def review_schemas(
    context: dict[str, Any], cart_delta: dict[str, Any], cart_ack: dict[str, Any]
) -> dict[str, Any]:
    """``context`` is the carts' causal context; a review's delta and ack have the carts' shape with the
    review's type tag and refusal codes."""
    statuses = ["pending", "published", "flagged", "rejected", "deleted", "erased"]
    delta = {
        **cart_delta,
        "description": "A review state or delta in the codec's JSON-safe form (crdt/codec.py); an unknown v"
        " is unsupported_codec_version, never guessed",
        "properties": {**cart_delta["properties"], "t": {"const": "review"}},
    }
    ack = {
        **cart_ack,
        "properties": {
            **cart_ack["properties"],
            "code": {"type": "string", "description": f"refused: {_PUSH_REFUSALS}"},
        },
    }
    return {
        "Review": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "product_id": {"type": "string"},
                "author": {"type": "string"},
                "status": {"enum": statuses},
                "rating": {"type": ["integer", "null"]},
                "text": {"type": ["string", "null"]},
                "media": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"id": {"type": "string"}, "url": {"type": ["string", "null"]}},
                    },
                },
                "helpful": {"type": "integer"},
                "version": {"type": "integer"},
                "created_at": {"type": "string"},
                "updated_at": {"type": "string"},
                "reasons": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "author and moderators: the last judgment's reason codes",
                },
                "reports": {"type": "integer", "description": "moderators only"},
                "conflicts": {"type": "object", "description": "author and moderators: concurrent losers"},
                "context": context,
            },
        },
        "ReviewSync": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "context": {"oneOf": [context, {"type": "null"}]},
                "pushes": {
                    "type": "array",
                    "maxItems": 100,
                    "items": {
                        "type": "object",
                        "required": ["mutation_id", "delta"],
                        "properties": {"mutation_id": {"type": "string"}, "delta": delta},
                    },
                },
            },
        },
        "ReviewSyncReply": {
            "type": "object",
            "properties": {
                "review": {"oneOf": [{"$ref": "#/components/schemas/Review"}, {"type": "null"}]},
                "acks": {"type": "array", "items": ack},
                "state": {"oneOf": [delta, {"type": "null"}], "description": "the state the device lacks"},
                "context": {"oneOf": [context, {"type": "null"}]},
                "version": {"type": "integer"},
            },
        },
        "ReviewPage": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Review"}},
                "next_cursor": {"type": ["string", "null"]},
                "next": {"type": "string"},
            },
        },
        "ProductRating": {
            "type": "object",
            "properties": {"product_id": {"type": "string"}, "rating": _AGGREGATE},
        },
        "RatingAggregate": _AGGREGATE,
        "RealtimeTicket": {
            "type": "object",
            "properties": {
                "ticket": {"type": "string"},
                "expires_at": {"type": "string", "format": "date-time"},
                "ttl": {"type": "integer", "description": "seconds"},
            },
        },
        "HelpfulVote": {
            "type": "object",
            "properties": {
                "review_id": {"type": "string"},
                "helpful": {"type": "integer"},
                "counted": {"type": "boolean"},
            },
        },
        "ReportReceipt": {
            "type": "object",
            "properties": {"review_id": {"type": "string"}, "reported": {"type": "boolean"}},
        },
    }
