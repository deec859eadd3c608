"""Who may act for a school: the one rule behind the schools', assets' and parts requests' routes and the
``parts-requests:{school_id}`` channel.

**A school's platform is bound by its API keys.** An admin makes a key with the scope
``parts-requests:write`` for the platform (``POST /api/v1/api-keys``) and names it in the school's
``api_keys`` (``POST /api/v1/schools`` or ``PATCH /api/v1/schools/{id}``). The school keeps the key's
*family* — the id of the first key of its rotations (hub/api_keys.py: the subject ``apikey.<family>``) —
so a rotated key stays bound, and a revoked one is refused before it gets here. One key may be bound to
several schools (a platform serving a district), a school to several keys.

The caller may act for a school when it is

* an ``admin`` or ``service`` token: the supplier's own people and systems, for every school;
* an API key holding ``parts-requests:write`` whose family the school names.

Anyone else — a customer's token, a key of another school, a key without the scope — is told the school
does not exist (``school_not_found``, 404): which schools exist is not theirs to learn.
"""

from __future__ import annotations

import re

from aiohttp import web

from hub.auth import Principal, require
from hub.errors import NotFoundError
from hub.keys import STORE
from storage.parts import School

PARTS_SCOPE = "parts-requests:write"
SUPPLIER_ROLES = frozenset({"admin", "service"})
SCHOOL_ID = r"[a-z0-9][a-z0-9\-]{0,63}"
_IS_SCHOOL_ID = re.compile(SCHOOL_ID)
_KEY_SUBJECT = "apikey."  # hub/api_keys.subject: what a key acts as


def key_family(who: Principal) -> str | None:
    """The family of the API key ``who`` is (None for a token)."""
    if who.api_key_id is None or not who.sub.startswith(_KEY_SUBJECT):
        return None
    return who.sub[len(_KEY_SUBJECT) :]


def is_supplier(who: Principal) -> bool:
    return bool(who.roles & SUPPLIER_ROLES)


def may_act_for(who: Principal, school: School) -> bool:
    if is_supplier(who):
        return True
    family = key_family(who)
    return family is not None and PARTS_SCOPE in who.scopes and family in school.api_keys


def school_not_found() -> NotFoundError:
    return NotFoundError("no such school", code="school_not_found")


def path_school_id(request: web.Request) -> str:
    """The school id of the path; one that breaks the id format cannot exist."""
    raw = request.match_info["school_id"]
    if not _IS_SCHOOL_ID.fullmatch(raw):
        raise school_not_found()
    return raw


async def school_of(request: web.Request) -> tuple[School, Principal]:
    """The school of the path and the caller, if the caller may act for it (else 404 school_not_found)."""
    who = require(request, *SUPPLIER_ROLES)  # (an API key got here by its scope: hub/authz.py)
    school = await request.app[STORE].get_school(path_school_id(request))
    if school is None or not may_act_for(who, school):
        raise school_not_found()
    return school, who
