"""The OpenAPI paths and schemas of reservations (``hub/openapi.py`` joins them)."""

from __future__ import annotations

from typing import Any

from hub.openapi_build import IDEMPOTENCY_KEY, op, path_param, problems, query, reply


def reservation_paths() -> dict[str, Any]:
    from hub.validation import SUBJECT, schema_of  # (late: the routes import the document)

    reservation_id = path_param("reservation_id")
    return {
        "/api/v1/reservations": {
            "post": op(
                "Reserve all lines or none (Idempotency-Key required)",
                {
                    "201": reply("Reservation", "reserved"),
                    **problems(
                        _422="idempotency_key_reused, reservation_cap_exceeded (scope: reservation or"
                        " user, cap, product_id, line, requested, held): nothing reserved",
                    ),
                },
                auth=True,
                body="NewReservation",
                params=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": True,
                        "schema": IDEMPOTENCY_KEY,
                    }
                ],
            ),
            "get": op(
                "The caller's reservations, newest first (an admin or service token: another user's,"
                " with sub)",
                {
                    "200": reply("ReservationPage"),
                    **problems(
                        _400="invalid_parameter, invalid_cursor",
                        _403="forbidden: sub names another user and the token is not admin or service;"
                        " insufficient_scope: an API key without reservations:read or reservations:write",
                    ),
                },
                auth=True,
                params=[
                    query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                    query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 200},
                        "page size (default 50)",
                    ),
                    query(
                        "sub",
                        schema_of(SUBJECT),
                        "whose reservations (default: the caller's; another's needs admin or service)",
                    ),
                ],
            ),
        },
        "/api/v1/reservations/{reservation_id}": {
            "get": op(
                "Read a reservation", {"200": reply("Reservation")}, auth=True, params=[reservation_id]
            ),
        },
        "/api/v1/reservations/{reservation_id}/commit": {
            "post": op(
                "Commit: reserved units leave on_hand",
                {"200": reply("Reservation")},
                auth=True,
                params=[reservation_id],
            ),
        },
        "/api/v1/reservations/{reservation_id}/release": {
            "post": op(
                "Release: reserved units return",
                {"200": reply("Reservation")},
                auth=True,
                params=[reservation_id],
            ),
        },
    }


def reservation_schemas() -> dict[str, Any]:
    return {
        "ReservationPage": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Reservation"}},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        "Reservation": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "owner": {"type": "string"},
                "status": {"enum": ["pending", "committed", "released", "expired"]},
                "lines": {"type": "array", "items": {"type": "object"}},
                "created_at": {"type": "string", "format": "date-time"},
                "expires_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
            },
        },
    }
