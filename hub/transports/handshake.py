"""The WebSocket opening handshake (RFC 6455 §4.2), server side.

The hub answers the upgrade itself — it writes the ``101 Switching Protocols`` and hands the socket to
its own protocol object (:mod:`hub.transports.websocket`) — so the checks aiohttp would make are made
here. A request that is not a valid upgrade gets a problem response with a stable code, before
anything is switched:

- ``websocket_upgrade_required`` (400): not a GET, or no ``Upgrade: websocket`` / ``Connection:
  upgrade``, or a ``Sec-WebSocket-Key`` that is not 16 bytes in base64;
- ``websocket_version_unsupported`` (426, with ``Sec-WebSocket-Version: 13``): another version (§4.4).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from aiohttp import web

from hub.errors import ApiError, BadRequest

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


class UpgradeRequired(BadRequest):
    code = "websocket_upgrade_required"


class VersionUnsupported(ApiError):
    status, code, title = 426, "websocket_version_unsupported", "Upgrade required"


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    # SHA-1 is what the protocol names (not a security hash here: the key is a nonce, public).
    digest = hashlib.sha1(key.encode() + _GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


def _tokens(value: str) -> list[str]:
    return [token.strip() for token in value.split(",") if token.strip()]


def check_upgrade(request: web.Request, protocols: tuple[str, ...]) -> tuple[str, str | None]:
    """The ``Sec-WebSocket-Accept`` value and the subprotocol chosen (the client's first one that is
    also in ``protocols``, or None: the caller's default), or a problem if this is no valid upgrade."""
    headers = request.headers
    if request.method != "GET":
        raise UpgradeRequired("a WebSocket upgrade is a GET")
    if headers.get("Upgrade", "").strip().lower() != "websocket":
        raise UpgradeRequired("this is a WebSocket endpoint: send Upgrade: websocket")
    if "upgrade" not in (token.lower() for token in _tokens(headers.get("Connection", ""))):
        raise UpgradeRequired("this is a WebSocket endpoint: send Connection: Upgrade")
    version = headers.get("Sec-WebSocket-Version", "").strip()
    if version != "13":
        raise VersionUnsupported(
            f"WebSocket version {version[:20] or 'none'} is not supported: use 13",
            headers={"Sec-WebSocket-Version": "13"},
        )
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        valid_key = False
    if not valid_key:
        raise UpgradeRequired("Sec-WebSocket-Key must be 16 bytes in base64")
    offered = _tokens(",".join(headers.getall("Sec-WebSocket-Protocol", ())))
    chosen = next((protocol for protocol in offered if protocol in protocols), None)
    return accept_key(key), chosen


def switching_protocols(accept: str, protocol: str | None) -> bytes:
    """The whole ``101`` response (status line and headers)."""
    head = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n"
    )
    if protocol is not None:
        head += f"Sec-WebSocket-Protocol: {protocol}\r\n"
    return (head + "\r\n").encode()
