"""The audit log's hub side: who did what to which target, when, under which request.

    request ids       every response carries ``X-Request-Id``: the request's own when it sent a well-formed
                      one (1-64 of ``A-Za-z0-9._:-``, so a proxy's id follows the request), else a new one
    the middleware    after the handler: a request that may change something (not GET, HEAD, OPTIONS) by
                      a privileged caller (an admin, moderator or service token, or an API key) that
                      succeeded (status < 400) is one entry — the actor's subject and roles, the action
                      (the route's name), the target (the path's first id and the kind it names, else the
                      ``Location`` of what the request created), the request id, and a detail of method,
                      status and API key id. A refused request changed nothing: it is not an action
    explicit entries  what the middleware cannot see or must not write: an admin reading a user's export
                      (a GET), and every erasure (written by the store in the erasure's transaction, with
                      the user's pseudonym instead of their subject); a request recorded so is not
                      recorded again

An entry is written once the action has committed, so an action is never refused for its entry; an
entry that cannot be written (the database failed in between) is logged as an error with everything it
held. Details never hold a subject: an erasure could not reach it there. The store keeps the table
append-only (storage/privacy.py).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hub.auth import Principal
from hub.authz import route_name
from hub.keys import AUDITED, PRINCIPAL, REQUEST_ID, STORE
from hub.responses import iso
from storage.errors import StoreError
from storage.privacy import AuditEntry

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
_WELL_FORMED_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PRIVILEGED_ROLES = frozenset({"admin", "moderator", "service"})
_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")


def request_id(request: web.Request) -> str:
    """The request's id: the one it sent if well-formed, else one made now (the same for its life)."""
    known: str | None = request.get(REQUEST_ID)
    if known is None:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        known = given if _WELL_FORMED_ID.fullmatch(given) else uuid.uuid4().hex
        request[REQUEST_ID] = known
    return known


async def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response names its request."""
    response.headers[REQUEST_ID_HEADER] = request_id(request)


def is_privileged(who: Principal) -> bool:
    return bool(who.roles & PRIVILEGED_ROLES) or who.api_key_id is not None


def _kind(segment: str) -> str:
    """The target kind a collection's path segment names: products → product, api-keys → api_key."""
    return segment.replace("-", "_").removesuffix("s")


def target_of(request: web.Request, response: web.StreamResponse | None = None) -> tuple[str, str]:
    """(kind, id) of what the request acted on: the path's first id, else what it created."""
    resource = request.match_info.route.resource
    if resource is not None:
        segments = resource.canonical.strip("/").split("/")
        for index, segment in enumerate(segments):
            found = _PARAMETER.fullmatch(segment)
            if found is not None and index > 0 and found.group(1) in request.match_info:
                return _kind(segments[index - 1]), request.match_info[found.group(1)]
    location = response.headers.get("Location", "") if response is not None else ""
    parts = location.removeprefix("/api/v1/").split("/")
    if location.startswith("/api/v1/") and len(parts) >= 2 and parts[1]:
        return _kind(parts[0]), parts[1]
    return "", ""


def entry_for(
    request: web.Request,
    who: Principal,
    action: str,
    target: tuple[str, str],
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    extra: dict[str, Any] = {"method": request.method}
    if who.api_key_id is not None:
        extra["api_key_id"] = who.api_key_id
    return AuditEntry(
        actor_sub=who.sub,
        actor_roles=tuple(sorted(who.roles)),
        action=action,
        target_kind=target[0],
        target_id=target[1],
        request_id=request_id(request),
        detail={**extra, **(detail or {})},
    )


async def record(
    request: web.Request,
    who: Principal,
    action: str,
    target: tuple[str, str],
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one entry for this request now (the middleware will not write another)."""
    await request.app[STORE].record_audit(entry_for(request, who, action, target, detail))
    mark_recorded(request)


def render_entry(entry: AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "at": iso(entry.at),
        "actor": {"sub": entry.actor_sub, "roles": list(entry.actor_roles)},
        "action": entry.action,
        "target": {"kind": entry.target_kind, "id": entry.target_id} if entry.target_kind else None,
        "request_id": entry.request_id or None,
        "detail": entry.detail,
    }


def mark_recorded(request: web.Request) -> None:
    """This request's entry is written elsewhere (an erasure's, by the store): the middleware skips it."""
    request[AUDITED] = True


@web.middleware
async def audit_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    if request.method in _SAFE_METHODS or response.status >= 400 or request.get(AUDITED):
        return response
    who: Principal | None = request.get(PRINCIPAL)
    name = route_name(request)
    if who is None or name is None or not is_privileged(who):
        return response
    entry = entry_for(request, who, name, target_of(request, response), {"status": response.status})
    try:
        await request.app[STORE].record_audit(entry)
    except StoreError:
        log.exception("an audit entry could not be written (the action had committed): %r", entry)
    return response
