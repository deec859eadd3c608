"""The client's exceptions, one hierarchy::

SyncHubError
├── ClientStopped        the hub said stop (close 4000–4099, 1002, 1007, 1009, or 401 with no way
│                        to refresh the token): the client does not reconnect; ``code`` says why
├── NotConnected         no connection to send a request on right now (it will come back)
├── ConnectionLost       the connection dropped with the request in flight: its outcome is unknown
├── RequestError         the hub answered a request with an ``error`` message (``code``, ``message``)
├── SubscriptionError    the hub refused a subscription (``channel_forbidden``, ``cart_not_found``, …)
└── HttpError            a REST call answered an error status (problem+json ``code``)
"""

from __future__ import annotations

from typing import Any


class SyncHubError(Exception):
    """Every error the client raises."""


class ClientStopped(SyncHubError):
    def __init__(self, code: int | str, reason: str = "") -> None:
        super().__init__(f"the hub stopped the client: {code} {reason}".strip())
        self.code = code
        self.reason = reason


class NotConnected(SyncHubError):
    pass


class ConnectionLost(SyncHubError):
    pass


class RequestError(SyncHubError):
    def __init__(self, reply: dict[str, Any]) -> None:
        self.code: str = str(reply.get("code", "error"))
        self.message: str = str(reply.get("message", ""))
        self.reply = reply
        super().__init__(f"{self.code}: {self.message}")


class SubscriptionError(SyncHubError):
    def __init__(self, channel: str, code: str, message: str = "") -> None:
        super().__init__(f"{channel}: {code} {message}".strip())
        self.channel = channel
        self.code = code
        self.message = message


class HttpError(SyncHubError):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.code: str = str(body.get("code", "")) if isinstance(body, dict) else ""
        super().__init__(f"HTTP {status} {self.code}".strip())
