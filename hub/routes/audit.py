"""GET /api/v1/audit: the audit log, for admins (hub/audit.py says what is recorded).

    GET /api/v1/audit?actor=&action=&target=&target_kind=&since=&until=&cursor=&limit=

Newest first; every filter given must match (``target`` is the target's id, ``since`` and ``until``
RFC 3339 times, ``since`` included and ``until`` not); ``next_cursor`` pages on (keyset on the
entries' ``seq``: a page never repeats or skips an entry because of newer ones). An unknown parameter
is refused, so that a misspelt filter cannot answer with everything.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from hub.audit import render_entry
from hub.auth import require
from hub.errors import BadRequest
from hub.keys import STORE
from hub.responses import json_response
from hub.routes.reviews import decode_cursor, encode_cursor
from hub.validation import SUBJECT, query_int, query_text, string
from storage.privacy import AuditQuery

routes = web.RouteTableDef()

MAX_PAGE = 200
_PARAMETERS = frozenset({"actor", "action", "target", "target_kind", "since", "until", "cursor", "limit"})
ACTION = string(1, 64, r"[a-z][a-z0-9_]*")
KIND = string(1, 32, r"[a-z][a-z0-9_]*")


def _time(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or len(raw) > 40:
        raise BadRequest(
            f"{name} is an RFC 3339 time with its offset, e.g. 2025-01-31T12:00:00Z",
            code="invalid_parameter",
            parameter=name,
        )
    return int(moment.timestamp() * 1_000_000)


@routes.get("/api/v1/audit", name="list_audit")
async def list_audit(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    unknown = sorted(set(request.query) - _PARAMETERS)
    if unknown:
        raise BadRequest(
            f"unknown parameter {unknown[0]!r}: the filters are {', '.join(sorted(_PARAMETERS))}",
            code="invalid_parameter",
            parameter=unknown[0],
        )
    cursor = request.query.get("cursor")
    before = decode_cursor(cursor, "audit", 1)[0] if cursor else None
    if before is not None and not (isinstance(before, int) and 0 < before < 2**63):
        raise BadRequest("the cursor does not belong to this listing; start again", code="invalid_cursor")
    query = AuditQuery(
        actor=query_text(request, "actor", SUBJECT),
        action=query_text(request, "action", ACTION),
        target_kind=query_text(request, "target_kind", KIND),
        target_id=query_text(request, "target", SUBJECT),
        since_us=_time(request, "since"),
        until_us=_time(request, "until"),
        before_seq=before,
        limit=query_int(request, "limit", 50, 1, MAX_PAGE),
    )
    page = await request.app[STORE].list_audit(query)
    body: dict[str, Any] = {
        "items": [render_entry(entry) for entry in page.items],
        "next_cursor": encode_cursor("audit", (page.next_before,)) if page.next_before else None,
    }
    if body["next_cursor"]:
        body["next"] = request.path + "?" + urlencode({**request.query, "cursor": body["next_cursor"]})
    return json_response(body)
