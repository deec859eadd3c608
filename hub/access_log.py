"""The access log: one line per request, without the secrets a URL may carry.

A browser's EventSource or WebSocket cannot set headers, so a token can arrive as ``access_token`` in
the query, and a media URL carries its signature: aiohttp's default line (``%r``) writes them in full.
This logger writes the path and the query with those values replaced by ``…``.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from hub.keys import CLIENT_ADDRESS

SECRET_PARAMETERS = frozenset({"access_token", "token", "ticket", "sig"})


def redacted_target(request: BaseRequest) -> str:
    if not request.query:
        return request.path
    query = "&".join(
        f"{quote(key, safe='')}={'…' if key in SECRET_PARAMETERS else quote(value, safe='')}"
        for key, value in request.query.items()
    )
    return f"{request.path}?{query}"


class RedactingAccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(20):  # INFO
            return
        version = request.version
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %s %.1fms "%s"',
            request.get(CLIENT_ADDRESS) or request.remote,
            request.method,
            redacted_target(request),
            version.major,
            version.minor,
            response.status,
            response.body_length,
            time * 1000,
            request.headers.get("User-Agent", "-"),
        )
