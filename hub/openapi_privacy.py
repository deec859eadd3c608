"""The OpenAPI paths and schemas of personal data (the profile, exports, erasure) and of the audit log
(``hub/openapi.py`` joins them)."""

from __future__ import annotations

from typing import Any

from hub.openapi_build import AUTH_PROBLEMS, op, path_param, problems, query, reply
from hub.routes import audit
from hub.validation import SUBJECT, schema_of

_NULLABLE_TEXT = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_PII_PROBLEMS = (
    "pii_key_unknown (the data was encrypted under a key this hub was not given), pii_undecryptable"
    " (it does not decrypt under its key: other key bytes, or data changed or moved)"
)
_ERASURE_PROBLEMS = "erasure_incomplete: a step failed; erasing again resumes (every step is idempotent)"


def privacy_paths() -> dict[str, Any]:
    sub = {**path_param("sub"), "schema": schema_of(SUBJECT)}  # (the routes' own rule)
    export = (
        "Everything the hub holds about the user, as JSON: profile (decrypted), carts, reviews (every"
        " status), helpful votes, reports, reservations, device replica ids, and the audit entries"
        " the user is the actor or the target of"
    )
    erasure = (
        "Erase the user: reviews erased through the review CRDT's absorbing erasure (aggregates and"
        " events move; no offline device can bring them back), carts deleted (cart.deleted on their"
        " channels), reservations, votes, reports and audit entries pseudonymised, the profile deleted,"
        " and the erasure audited. Idempotent: erasing again erases what was written since, else nothing"
    )
    return {
        "/api/v1/me": {
            "get": op(
                "The caller's profile, email and phone decrypted (none yet: every field null, version 0)."
                " ETag: its version",
                {
                    "200": reply("Profile"),
                    **problems(**AUTH_PROBLEMS, _403="forbidden: a person's token", _500=_PII_PROBLEMS),
                },
                auth=True,
            ),
            "put": op(
                "Replace the caller's profile (a field absent or null: none). Email and phone are encrypted"
                " at rest under the hub's current key. If-Match: the version read",
                {
                    "200": reply("Profile"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="malformed_json, validation_failed (display_name 1-100 characters, no control"
                        " characters; email an address of ≤ 254 characters; phone E.164, e.g."
                        " +33612345678; no unknown field), invalid_precondition",
                        _403="forbidden: a person's token",
                        _412="precondition_failed: the profile changed since it was read",
                        _415="unsupported_media_type",
                    ),
                },
                auth=True,
                body="ProfileUpdate",
            ),
            "delete": op(
                "Erase the caller. " + erasure,
                {
                    "200": reply("Erasure"),
                    **problems(**AUTH_PROBLEMS, _403="forbidden: a person's token", _500=_ERASURE_PROBLEMS),
                },
                auth=True,
            ),
        },
        "/api/v1/me/export": {
            "get": op(
                export + " (the caller)",
                {
                    "200": reply("UserExport"),
                    **problems(**AUTH_PROBLEMS, _403="forbidden: a person's token", _500=_PII_PROBLEMS),
                },
                auth=True,
            ),
        },
        "/api/v1/users/{sub}/export": {
            "get": op(
                export + " (admins; the audit log records who read it)",
                {
                    "200": reply("UserExport"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="invalid_parameter: sub",
                        _403="forbidden: needs the admin role",
                        _500=_PII_PROBLEMS,
                    ),
                },
                auth=True,
                params=[sub],
            ),
        },
        "/api/v1/users/{sub}": {
            "delete": op(
                "Erase a user (admins). " + erasure,
                {
                    "200": reply("Erasure"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="invalid_parameter: sub",
                        _403="forbidden: needs the admin role",
                        _500=_ERASURE_PROBLEMS,
                    ),
                },
                auth=True,
                params=[sub],
            ),
        },
        "/api/v1/audit": {
            "get": op(
                "The audit log (admins), newest first: every admin, moderator, service and API-key write"
                " that succeeded, admins' reads of a user's export, and every erasure",
                {
                    "200": reply("AuditPage"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="invalid_parameter (an unknown parameter too), invalid_cursor",
                        _403="forbidden: needs the admin role",
                    ),
                },
                auth=True,
                params=[
                    query("actor", schema_of(SUBJECT), "the actor's subject"),
                    query("action", schema_of(audit.ACTION), "a route's name"),
                    query("target", schema_of(SUBJECT), "the target's id"),
                    query("target_kind", schema_of(audit.KIND), "user, product, review, reservation, ..."),
                    query("since", _TIME, "at or after this time (RFC 3339)"),
                    query("until", _TIME, "before this time (RFC 3339)"),
                    query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size (50)"),
                ],
            ),
        },
    }


def _items(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": schema}


def privacy_schemas() -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/AuditEntry"}
    return {
        "Profile": {
            "type": "object",
            "properties": {
                "sub": {"type": "string"},
                "display_name": _NULLABLE_TEXT,
                "email": _NULLABLE_TEXT,
                "phone": _NULLABLE_TEXT,
                "version": {"type": "integer", "description": "0: no profile yet"},
                "created_at": {"type": ["string", "null"], "format": "date-time"},
                "updated_at": {"type": ["string", "null"], "format": "date-time"},
            },
        },
        "UserExport": {
            "type": "object",
            "properties": {
                "sub": {"type": "string"},
                "exported_at": _TIME,
                "profile": {"oneOf": [{"$ref": "#/components/schemas/Profile"}, {"type": "null"}]},
                "carts": _items({"$ref": "#/components/schemas/Cart"}),
                "reviews": _items({"$ref": "#/components/schemas/Review"}),
                "helpful_votes": _items({"type": "object"}),
                "reports": _items({"type": "object"}),
                "reservations": _items({"$ref": "#/components/schemas/Reservation"}),
                "media": _items(
                    {
                        "type": "object",
                        "description": "the user's uploads: id, content_type, size, created_at, and a"
                        " signed url to fetch each",
                        "properties": {
                            "id": {"type": "string", "format": "uuid"},
                            "content_type": {"type": "string"},
                            "size": {"type": "integer"},
                            "created_at": _TIME,
                            "url": {"type": "string"},
                        },
                    }
                ),
                "devices": _items({"type": "object", "description": "replica_id, created_at"}),
                "audit": _items(ref),
                "personalization": {
                    "type": "object",
                    "description": "consent (as GET /api/v1/me/consent), every behaviour event kept (type,"
                    " product_id / query / attributes, region, ts, received_at, consent_granted_at,"
                    " expires_at) and the preferred attributes (attribute, value, count, updated_at)",
                    "properties": {
                        "consent": {"$ref": "#/components/schemas/Consent"},
                        "events": _items({"type": "object"}),
                        "preferences": _items({"type": "object"}),
                    },
                },
            },
        },
        "Erasure": {
            "type": "object",
            "description": "what the erasure changed (all 0 when erased before and nothing new was written)",
            "properties": {
                "pseudonym": {"type": "string", "description": "erased:… — the user in what is kept"},
                "reviews_erased": {"type": "integer"},
                "media_deleted": {
                    "type": "integer",
                    "description": "uploads deleted from the media store (their signed URLs answer 404)",
                },
                "carts_deleted": {"type": "integer"},
                "reservations_pseudonymised": {"type": "integer"},
                "reviews_pseudonymised": {"type": "integer"},
                "reviews_left": {"type": "integer", "description": "written during the erasure: erase again"},
                "votes_pseudonymised": {"type": "integer"},
                "reports_pseudonymised": {"type": "integer"},
                "audit_entries_pseudonymised": {"type": "integer"},
                "profile_deleted": {"type": "integer"},
                "behaviour_events_deleted": {
                    "type": "integer",
                    "description": "with the consent record, recent products and preferred attributes",
                },
                "audit_seq": {"type": "integer", "description": "the erasure's own audit entry"},
            },
        },
        "AuditEntry": {
            "type": "object",
            "properties": {
                "seq": {"type": "integer"},
                "at": _TIME,
                "actor": {
                    "type": "object",
                    "properties": {
                        "sub": {"type": "string"},
                        "roles": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "action": {"type": "string", "description": "the route's name (create_product, erase_user…)"},
                "target": {
                    "type": ["object", "null"],
                    "properties": {"kind": {"type": "string"}, "id": {"type": "string"}},
                },
                "request_id": {"type": ["string", "null"], "description": "the request's X-Request-Id"},
                "detail": {
                    "type": "object",
                    "description": "method, status, api_key_id; an erasure's counts",
                },
            },
        },
        "AuditPage": {
            "type": "object",
            "properties": {
                "items": _items(ref),
                "next_cursor": {"type": ["string", "null"]},
                "next": {"type": "string"},
            },
        },
    }
