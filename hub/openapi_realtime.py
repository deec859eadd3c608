"""The OpenAPI paths of the real-time transports: WebSocket, SSE and long-poll (docs/protocol.md says
what flows on them; ``hub/openapi.py`` joins them)."""

from __future__ import annotations

from typing import Any

from hub.openapi_build import op, problems, query


def realtime_paths() -> dict[str, Any]:
    return {
        "/api/v1/ws": {
            "get": op(
                "WebSocket (subprotocols synchub.json, synchub.msgpack); see docs/protocol.md",
                {"101": {"description": "switching protocols"}},
                params=[
                    query(
                        "access_token",
                        {"type": "string"},
                        "bearer token: optional for inventory channels, needed for cart: and user:"
                        " channels and for sync/push",
                    )
                ],
            ),
        },
        "/api/v1/sse": {
            "get": op(
                "Server-Sent Events; see docs/protocol.md",
                {
                    "200": {"description": "text/event-stream"},
                    **problems(
                        _400="invalid_channel, channel_not_served, channels_span_streams, invalid_position",
                        _401="unauthenticated (cart: and user: channels need a token), invalid_token,"
                        " token_expired",
                        _403="channel_forbidden: another user's user: channel",
                        _404="cart_not_found: no such cart, or another user's",
                    ),
                },
                params=[
                    query("channels", {"type": "string"}, "comma-separated channel names (1-20)"),
                    query("last_event_id", {"type": "string"}, "resume position (or Last-Event-ID)"),
                    query(
                        "access_token",
                        {"type": "string"},
                        "bearer token (or Authorization): optional for inventory channels only",
                    ),
                ],
            ),
        },
        "/api/v1/poll": {
            "get": op(
                "Long-poll: events after the cursor, waiting up to timeout seconds",
                {
                    "200": {"description": "events and the next cursor"},
                    **problems(
                        _400="invalid_channel, channel_not_served, channels_span_streams,"
                        " invalid_position, invalid_parameter",
                        _401="unauthenticated (cart: and user: channels need a token), invalid_token,"
                        " token_expired",
                        _403="channel_forbidden: another user's user: channel",
                        _404="cart_not_found: no such cart, or another user's",
                        _410="resync_required: start again from the snapshot",
                    ),
                },
                params=[
                    query("channels", {"type": "string"}, "comma-separated channel names (1-20)"),
                    query("cursor", {"type": "string"}, "position from the previous reply"),
                    query("timeout", {"type": "integer", "minimum": 0, "maximum": 60}, "seconds"),
                    query(
                        "access_token",
                        {"type": "string"},
                        "bearer token (or Authorization): optional for inventory channels only",
                    ),
                ],
            ),
        },
    }
