"""A WebSocket connection's credential, while the connection lives: what it is (``session``) and how
it is replaced without reconnecting (``refresh``).

    → {"type": "session", "id": 1}
    ← {"type": "session", "id": 1, "sub": "alice", "roles": [...], "ttl": 297, "grace": 25}

    → {"type": "refresh", "id": 2, "token": "<a new bearer token>"}
    ← {"type": "refreshed", "id": 2, "ttl": 3600}

A refresh must name the connection's subject (``subject_mismatch`` otherwise: a connection does not
change hands, nor does an anonymous one become a user's — reconnect for that). The new token's roles
are checked against every subscription, as a subscribe would be: one the new token may not follow is
ended with ``{"type": "unsubscribed", "channel": …, "code": "channel_forbidden", "message": …}``
before the ``refreshed`` reply. A refused token (``invalid_token``, ``token_expired``,
``unknown_key``, ``keys_unavailable``) changes nothing: the connection keeps its old token and
its deadline.

When the token expires the hub sends ``{"type": "token_expired", "grace": seconds}`` once and keeps the
connection for that grace (``--token-refresh-grace-seconds``, 25 by default) so that a client whose
refresh was in flight is not cut off; then it closes with 4102.
"""

from __future__ import annotations

from typing import Any

from hub.auth import Principal, authenticate
from hub.channel_access import resolve_channel
from hub.errors import ApiError
from hub.realtime import seconds_until_expiry
from sync.channels import ChannelError

SESSION_FIELDS = {"type", "id"}
REFRESH_FIELDS = {"type", "id", "token"}


class RefreshRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def session_reply(principal: Principal | None, grace: float) -> dict[str, Any]:
    ttl = seconds_until_expiry(principal)
    return {
        "type": "session",
        "sub": None if principal is None else principal.sub,
        "roles": [] if principal is None else sorted(principal.roles),
        "ttl": None if ttl is None else int(ttl),
        "grace": grace,
    }


async def verify_refresh(connection: Any, message: dict[str, Any]) -> Principal:
    """The principal of the refresh's token, if it may replace the connection's (see the module)."""
    token = message.get("token")
    if not isinstance(token, str) or not token or len(token) > 16_384:
        raise RefreshRefused("invalid_token", "token must be a non-empty string")
    try:
        renewed = await authenticate(connection.app, token)
    except ApiError as exc:
        raise RefreshRefused(exc.code, exc.detail) from exc
    current: Principal | None = connection.principal
    if current is None or renewed.sub != current.sub:
        raise RefreshRefused(
            "subject_mismatch", "a refresh must carry a token of the connection's subject: reconnect instead"
        )
    return renewed


async def recheck_subscriptions(connection: Any, renewed: Principal) -> list[dict[str, Any]]:
    """End the subscriptions ``renewed`` may not follow; the notices to send, one per ended one."""
    ended = []
    for name in list(connection.feeds):
        try:
            await resolve_channel(connection.app, renewed, name)
        except ChannelError as exc:
            feed = connection.feeds.pop(name, None)
            if feed is None:  # (unsubscribed meanwhile)
                continue
            feed.close()
            connection.metrics.subscriptions.labels("websocket").dec()
            ended.append({"type": "unsubscribed", "channel": name, "code": exc.code, "message": exc.message})
    return ended
