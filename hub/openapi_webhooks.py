"""The OpenAPI paths and schemas of webhooks (``hub/openapi.py`` joins them; the request bodies are made
from hub/routes/webhooks.py's own fields)."""

from __future__ import annotations

from typing import Any

from hub.openapi_build import AUTH_PROBLEMS, op, problems, query, reply
from hub.webhooks.sources import all_types, patterns

_ID = {"name": "webhook_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
_WHEN = {"type": ["string", "null"], "format": "date-time"}
_TIME = {"type": "string", "format": "date-time"}
_MESSAGE_ID = {"type": "string", "pattern": "^msg_[a-z2-7]{24}$"}
_MANAGE = (
    "forbidden: a token without the admin role; insufficient_scope: an API key without webhooks:manage, or"
    " subscribing to private events without a scope that reads them (required_scopes)"
)
_TARGET = (
    "webhook_target_forbidden: the URL's host is or resolves to a loopback, private, link-local, multicast,"
    " unspecified or reserved address (reason, address), unless --webhook-allow-hosts names it;"
    " webhook_target_unresolvable: the host does not resolve"
)
_BODY_400 = (
    "malformed_json, validation_failed (the url, events or description break their rules; no unknown field)"
)


def webhook_paths() -> dict[str, Any]:
    page = [
        query("cursor", {"type": "string"}, "next_cursor of the previous page"),
        query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size (default 50)"),
    ]
    found = {**AUTH_PROBLEMS, "_400": "invalid_id", "_403": _MANAGE, "_404": "webhook_not_found"}
    return {
        "/api/v1/webhooks": {
            "post": op(
                "Make a webhook endpoint (an API key with webhooks:manage, or an admin): its signing secret"
                " is in this answer and nowhere else, ever",
                {
                    "201": {
                        **reply("NewWebhookReply", "made"),
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    **problems(
                        **AUTH_PROBLEMS,
                        _400=_BODY_400,
                        _403=_MANAGE,
                        _409="too_many_webhooks: the owner has 50",
                        _422=_TARGET,
                    ),
                },
                auth=True,
                body="NewWebhook",
            ),
            "get": op(
                "The caller's webhook endpoints (an admin's: every one), newest first",
                {
                    "200": reply("WebhookPage"),
                    **problems(**AUTH_PROBLEMS, _400="invalid_parameter, invalid_cursor", _403=_MANAGE),
                },
                auth=True,
                params=page,
            ),
        },
        "/api/v1/webhooks/{webhook_id}": {
            "get": op(
                "One webhook endpoint (ETag: its version)",
                {"200": reply("Webhook"), **problems(**found)},
                auth=True,
                params=[_ID],
            ),
            "patch": op(
                "Change its URL, events, description, or enable or disable it (If-Match: its ETag). Enabled"
                " again, it resumes from where its streams stood when it stopped",
                {
                    "200": reply("Webhook"),
                    **problems(
                        **{**found, "_400": f"invalid_id, {_BODY_400}, invalid_precondition"},
                        _412="precondition_failed: it changed since it was read",
                        _422=_TARGET,
                    ),
                },
                auth=True,
                body="WebhookPatch",
                params=[
                    _ID,
                    {
                        "name": "If-Match",
                        "in": "header",
                        "schema": {"type": "string", "pattern": '^"[0-9]{1,18}"$'},
                    },
                ],
            ),
            "delete": op(
                "Delete it, its queue, dead letters and delivery log",
                {"204": {"description": "deleted"}, **problems(**found)},
                auth=True,
                params=[_ID],
            ),
        },
        "/api/v1/webhooks/{webhook_id}/rotate-secret": {
            "post": {
                **op(
                    "Give it a new signing secret, in this answer only. The replaced secret signs too (a"
                    " second signature in webhook-signature) until the overlap ends: 24 h unless asked,"
                    " at most 7 days, 0 for a leaked one. Each node signs with the new secret from its"
                    " next lease round (at once on the node answering)",
                    {
                        "200": reply("NewWebhookReply", "rotated"),
                        **problems(
                            **{
                                **found,
                                "_400": "invalid_id, malformed_json, validation_failed (overlap_seconds 0-7"
                                " days), invalid_precondition",
                            },
                            _412="precondition_failed: it changed since it was read",
                        ),
                    },
                    auth=True,
                    params=[
                        _ID,
                        {
                            "name": "If-Match",
                            "in": "header",
                            "schema": {"type": "string", "pattern": '^"[0-9]{1,18}"$'},
                        },
                    ],
                ),
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/WebhookSecretRotation"}}
                    },
                },
            },
        },
        "/api/v1/webhooks/{webhook_id}/test": {
            "post": op(
                "Queue a signed webhook.ping message to it (delivered as any message: retried, logged)",
                {
                    "202": reply("WebhookPing", "queued"),
                    **problems(**found, _409="webhook_disabled: enable it first"),
                },
                auth=True,
                params=[_ID],
            ),
        },
        "/api/v1/webhooks/{webhook_id}/replay": {
            "post": op(
                "Send messages again, under their own webhook-id (receivers see resends): those after a"
                " position (a message's position), those of events from a time on, or one dead letter —"
                " among the messages kept (7 days)",
                {
                    "202": reply("WebhookReplayed", "queued again"),
                    **problems(
                        **{
                            **found,
                            "_400": f"invalid_id, {_BODY_400} (exactly one of the three)",
                            "_404": "webhook_not_found; dead_letter_not_found: no such dead letter",
                        },
                    ),
                },
                auth=True,
                body="WebhookReplay",
                params=[_ID],
            ),
        },
        "/api/v1/webhooks/{webhook_id}/deliveries": {
            "get": op(
                "The delivery log: every attempt (when, HTTP status, latency, error, outcome), newest first",
                {
                    "200": reply("WebhookAttemptPage"),
                    **problems(**{**found, "_400": "invalid_id, invalid_parameter, invalid_cursor"}),
                },
                auth=True,
                params=[_ID, *page, query("message_id", _MESSAGE_ID, "only this message's attempts")],
            ),
        },
        "/api/v1/webhooks/{webhook_id}/dead-letters": {
            "get": op(
                "The dead letters: messages whose every attempt of their retry window failed, newest first",
                {
                    "200": reply("WebhookDeadLetterPage"),
                    **problems(**{**found, "_400": "invalid_id, invalid_parameter, invalid_cursor"}),
                },
                auth=True,
                params=[_ID, *page],
            ),
        },
    }


def webhook_request_bodies() -> dict[str, Any]:
    from hub.routes import webhooks  # (late: the routes import the document through hub.routes.ops)
    from hub.validation import body_schema

    return {
        "NewWebhook": body_schema(webhooks.CREATE_FIELDS),
        "WebhookPatch": body_schema(webhooks.PATCH_FIELDS, partial=True),
        "WebhookReplay": webhooks.replay_schema(),
        "WebhookSecretRotation": body_schema(webhooks.ROTATE_FIELDS),
    }


def webhook_schemas() -> dict[str, Any]:
    subscription = {
        "type": "object",
        "properties": {
            "type": {"enum": patterns()},
            "filters": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
        },
    }
    record = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "url": {"type": "string"},
            "description": {"type": "string"},
            "events": {"type": "array", "items": subscription},
            "enabled": {"type": "boolean"},
            "disabled_reason": {
                "type": ["string", "null"],
                "description": "owner (disabled by a PATCH), failing (every attempt failed for too long, or"
                " too many dead letters), owner_revoked (its API key no longer works)",
            },
            "disabled_at": _WHEN,
            "failing_since": {**_WHEN, "description": "the first failed attempt since the last success"},
            "dead_letters": {"type": "integer", "description": "dead letters since the last success"},
            "previous_secret_expires_at": {
                **_WHEN,
                "description": "until when the secret the last rotation replaced signs too (null: it no"
                " longer does)",
            },
            "owner": {"type": "string", "description": "apikey.<id> or an admin's subject"},
            "version": {"type": "integer"},
            "created_at": _TIME,
            "updated_at": _TIME,
        },
    }
    ref = {"$ref": "#/components/schemas/Webhook"}

    def page(item: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": item},
                "next_cursor": {"type": ["string", "null"]},
            },
        }

    return {
        "Webhook": record,
        "NewWebhookReply": {
            "allOf": [
                ref,
                {
                    "type": "object",
                    "properties": {
                        "secret": {
                            "type": "string",
                            "pattern": "^whsec_[A-Za-z0-9+/=]+$",
                            "description": "the signing secret (Standard Webhooks: whsec_<base64 key>)."
                            " Shown once",
                        }
                    },
                },
            ]
        },
        "WebhookPage": page(ref),
        "WebhookPing": {
            "type": "object",
            "properties": {"message_id": _MESSAGE_ID, "event_type": {"const": "webhook.ping"}},
        },
        "WebhookReplayed": {"type": "object", "properties": {"queued": {"type": "integer", "minimum": 0}}},
        "WebhookAttemptPage": page(
            {
                "type": "object",
                "properties": {
                    "message_id": _MESSAGE_ID,
                    "event_type": {"enum": [*all_types(), "webhook.ping"]},
                    "attempt": {"type": "integer", "minimum": 1},
                    "at": _TIME,
                    "status_code": {"type": ["integer", "null"]},
                    "latency_ms": {"type": "number"},
                    "error": {"type": ["string", "null"]},
                    "outcome": {"enum": ["delivered", "retry", "dead"]},
                },
            }
        ),
        "WebhookDeadLetterPage": page(
            {
                "type": "object",
                "properties": {
                    "message_id": _MESSAGE_ID,
                    "event_type": {"type": "string"},
                    "attempts": {"type": "integer"},
                    "queued_at": _TIME,
                    "dead_at": _TIME,
                    "last_error": {"type": ["string", "null"]},
                    "payload": {"type": "object", "description": "the message's body, as sent"},
                },
            }
        ),
    }
