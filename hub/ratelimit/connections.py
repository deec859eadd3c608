"""Real-time connections (WebSocket and SSE) open on this node, per user and, for anonymous ones, per
client IP: a connection over its cap is refused before the upgrade or the stream, 429
``too_many_connections``. Counted per node (a client's connections to other nodes are theirs to
count): one dict of counts, an entry only while its count is above zero."""

from __future__ import annotations

from hub.auth import Principal
from hub.errors import TooManyRequests
from hub.metrics import Metrics


class ConnectionSlot:
    """One counted connection: :meth:`release` it once, when the connection ends (again: no effect)."""

    __slots__ = ("_caps", "_key")

    def __init__(self, caps: ConnectionCaps | None, key: str) -> None:
        self._caps, self._key = caps, key

    def release(self) -> None:
        caps, self._caps = self._caps, None
        if caps is not None:
            caps.release(self._key)


_UNCOUNTED = ConnectionSlot(None, "")


class ConnectionCaps:
    """``per_user`` connections per authenticated user, ``per_ip`` anonymous ones per client IP (0: no
    cap); tokens of ``exempt_roles`` are not counted."""

    def __init__(self, per_user: int, per_ip: int, exempt_roles: frozenset[str], metrics: Metrics) -> None:
        self.per_user, self.per_ip = per_user, per_ip
        self._exempt = exempt_roles
        self._metrics = metrics
        self._open: dict[str, int] = {}

    def count(self, key: str) -> int:
        """Connections counted under ``key`` (``user:<sub>`` or ``ip:<address>``)."""
        return self._open.get(key, 0)

    def acquire(self, principal: Principal | None, remote: str | None) -> ConnectionSlot:
        """Count one more connection, or raise TooManyRequests(too_many_connections)."""
        if principal is not None:
            if principal.roles & self._exempt:
                return _UNCOUNTED
            scope, key, cap = "user", f"user:{principal.sub}", self.per_user
        else:
            scope, key, cap = "ip", f"ip:{remote or 'unknown'}", self.per_ip
        if not cap:
            return _UNCOUNTED
        count = self._open.get(key, 0)
        if count >= cap:
            self._metrics.rate_limited.labels("connections", scope).inc()
            who = "this user" if scope == "user" else "anonymous clients of this address"
            raise TooManyRequests(
                f"{who} already hold {count} real-time connections on this node (at most {cap}): close"
                " one first",
                code="too_many_connections",
                limit=cap,
            )
        self._open[key] = count + 1
        return ConnectionSlot(self, key)

    def release(self, key: str) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)
