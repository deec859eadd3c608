"""/api/v1/me and /api/v1/users/{sub}: a user's profile, their export and their erasure.

    GET    /api/v1/me                  the caller's profile, email and phone decrypted (ETag: its version)
    PUT    /api/v1/me                  replace it: {"display_name", "email", "phone"}, each optional and
                                       nullable (absent or null: none); If-Match: the version read
    GET    /api/v1/me/export           everything the hub holds about the caller, as JSON
    DELETE /api/v1/me                  erase the caller (hub/privacy.py); again: nothing more to erase
    GET    /api/v1/users/{sub}/export  admins: the same for any user (an audit entry says who looked)
    DELETE /api/v1/users/{sub}         admins: erase any user

Email and phone are encrypted at rest (hub/pii.py); the display name is not (it is shown to others).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hub.audit import record
from hub.auth import Principal, require
from hub.errors import BadRequest
from hub.keys import PII_KEYS, STORE
from hub.privacy import erase, export, render_profile, seal_profile
from hub.responses import expected_version, json_response, version_etag
from hub.validation import SUBJECT, Field, FieldError, Validator, read_json, string, validate
from storage.privacy import Erasure

routes = web.RouteTableDef()

PEOPLE = ("admin", "customer", "moderator")  # the roles of a person's token: services have no profile

# The profile's rules (also the OpenAPI document's: hub/openapi_privacy.py). A name to show: no control
# characters, not only spaces. An address as a person types it (RFC 5321's lengths; no spaces, one @, a
# dotted domain of LDH labels). A phone in E.164: +, country code and number, digits only.
# Spaces spelled out, not \s: Python's and ECMAScript's (the document's readers') differ (\x85, \ufeff).
_SPACES = r"\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
DISPLAY_NAME_PATTERN = rf"(?=.*[^{_SPACES}])[^\x00-\x1f\x7f-\x9f]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_PATTERN = rf"[^@\x00-\x1f\x7f-\x9f{_SPACES}]{{1,64}}@(?:{_LABEL}\.)+{_LABEL}"
PHONE_PATTERN = r"\+[1-9][0-9]{6,14}"
_DISPLAY_NAME = string(1, 100, DISPLAY_NAME_PATTERN)
_EMAIL = string(3, 254, EMAIL_PATTERN)
_PHONE = string(8, 16, PHONE_PATTERN)


def _nullable(check: Validator) -> Validator:
    def nullable(value: Any) -> Any:
        return None if value is None else check(value)

    described = getattr(check, "schema", None)  # (a validator that carries its JSON Schema)
    if described is not None:
        nullable.schema = {"anyOf": [described, {"type": "null"}]}  # type: ignore[attr-defined]
    return nullable


PROFILE_FIELDS = {
    "display_name": Field(_nullable(_DISPLAY_NAME)),
    "email": Field(_nullable(_EMAIL)),
    "phone": Field(_nullable(_PHONE)),
}


def _subject(request: web.Request) -> str:
    try:
        sub: str = SUBJECT(request.match_info["sub"])
    except FieldError as exc:
        raise BadRequest(f"sub: {exc.message}", code="invalid_parameter", parameter="sub") from exc
    return sub


async def _profile_response(request: web.Request, who: Principal) -> web.Response:
    profile = await request.app[STORE].get_profile(who.sub)
    body = render_profile(request.app[PII_KEYS], who.sub, profile)
    return json_response(body, headers={"ETag": version_etag(body["version"])})


@routes.get("/api/v1/me", name="get_me")
async def get_me(request: web.Request) -> web.StreamResponse:
    return await _profile_response(request, require(request, *PEOPLE))


@routes.put("/api/v1/me", name="put_me")
async def put_me(request: web.Request) -> web.StreamResponse:
    who = require(request, *PEOPLE)
    fields = validate(await read_json(request), PROFILE_FIELDS)
    keyring = request.app[PII_KEYS]
    stored = await request.app[STORE].put_profile(
        seal_profile(keyring, who.sub, fields), expected_version(request)
    )
    body = render_profile(keyring, who.sub, stored)
    return json_response(body, headers={"ETag": version_etag(stored.version)})


@routes.get("/api/v1/me/export", name="export_me")
async def export_me(request: web.Request) -> web.StreamResponse:
    who = require(request, *PEOPLE)
    return json_response(await export(request.app, who.sub))


@routes.delete("/api/v1/me", name="erase_me")
async def erase_me(request: web.Request) -> web.StreamResponse:
    who = require(request, *PEOPLE)
    erasure = await erase(request, who, who.sub, "erase_me")
    return json_response(_erased(erasure))


@routes.get("/api/v1/users/{sub}/export", name="export_user")
async def export_user(request: web.Request) -> web.StreamResponse:
    who = require(request, "admin")
    sub = _subject(request)
    body = await export(request.app, sub)
    await record(request, who, "export_user", ("user", sub))
    return json_response(body)


@routes.delete("/api/v1/users/{sub}", name="erase_user")
async def erase_user(request: web.Request) -> web.StreamResponse:
    who = require(request, "admin")
    erasure = await erase(request, who, _subject(request), "erase_user")
    return json_response(_erased(erasure))


def _erased(erasure: Erasure) -> dict[str, Any]:
    return {
        "pseudonym": erasure.entry.target_id,
        "reviews_erased": erasure.entry.detail.get("reviews_erased", 0),
        "media_deleted": erasure.entry.detail.get("media_deleted", 0),
        **erasure.counts(),
        "audit_seq": erasure.entry.seq,
    }
