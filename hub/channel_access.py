"""Who may follow which channel: the one place where a channel name and a connection's principal become
a :class:`~sync.channels.Channel`, for every transport, at subscribe and at every resume.

    inventory:…    anyone (a token is optional; one that is sent must be valid)
    reviews:…      anyone, alike (published reviews only ever reach these channels)
    user:{sub}     the user ``sub``; service and admin tokens may read any
    cart:{id}      the cart's owner; service and admin tokens may read any. A cart that does not exist,
                   or that is another user's, is ``cart_not_found`` alike (existence is not revealed)
    parts-requests:{school_id}
                   an API key bound to the school (hub/schools.py) holding ``parts-requests:write``;
                   service and admin tokens may read any. A school that does not exist, or that the
                   caller may not act for, is ``school_not_found`` alike; a school of another region
                   than the node's is ``channel_not_served``

Refusals are :class:`~sync.channels.ChannelError` with a stable code (``unauthenticated``,
``channel_forbidden``, ``cart_not_found``, ``school_not_found``, ``invalid_channel``,
``channel_not_served``); each transport
turns them into its own error (a WebSocket error reply, a problem+json response).
"""

from __future__ import annotations

from aiohttp import web

from hub.auth import Principal
from hub.keys import ENGINE, STORE
from hub.schools import may_act_for
from sync.channels import (
    CART,
    PARTS_REQUESTS,
    REGIONAL,
    REVIEWS,
    Channel,
    ChannelError,
    cart_channel,
    inventory_channel,
    parse_channel_name,
    parts_requests_channel,
    reviews_channel,
    user_channel,
)

READ_ANY_ROLES = frozenset({"service", "admin"})

_SHARED: dict[str, Channel] = {}
_SHARED_MAX = 10_000


def may_read_any(principal: Principal | None) -> bool:
    return principal is not None and bool(principal.roles & READ_ANY_ROLES)


def public_channel(name: str) -> Channel | None:
    """The public (inventory or reviews) channel of that name, the same object for every connection
    that names it so (a few hundred bytes less per subscription); None if the name is not a public
    channel's. Bounded: past 10,000 names the cache starts over."""
    found = _SHARED.get(name)
    if found is not None:
        return found
    parsed = parse_channel_name(name)
    if parsed.kind not in REGIONAL:
        return None
    assert parsed.region is not None
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    make = reviews_channel if parsed.kind is REVIEWS else inventory_channel
    found = _SHARED[name] = make(parsed.region, parsed.key)
    return found


async def resolve_channel(app: web.Application, principal: Principal | None, name: str) -> Channel:
    """The channel ``name`` names, if ``principal`` may follow it (see the module docstring)."""
    engine = app[ENGINE]
    public = public_channel(name)
    if public is not None:
        engine.check_channel(public)
        return public
    parsed = parse_channel_name(name)
    assert parsed.key is not None
    if principal is None:
        raise ChannelError("unauthenticated", f"{parsed.kind.name} channels need a bearer token")
    if parsed.kind is CART:
        home = await app[STORE].cart_owner(parsed.key)
        if home is None or (home.sub != principal.sub and not may_read_any(principal)):
            raise ChannelError("cart_not_found", "no such cart")
        # A cart's events are on its own region's stream: a node of another region says so.
        channel = cart_channel(home.region, parsed.key, home.sub)
        engine.check_channel(channel)
        return channel
    if parsed.kind is PARTS_REQUESTS:
        school = await app[STORE].get_school(parsed.key)
        if school is None or not may_act_for(principal, school):
            raise ChannelError("school_not_found", "no such school")
        # A school's events are on its own region's stream: a node of another region says so.
        channel = parts_requests_channel(school.region, school.id)
        engine.check_channel(channel)
        return channel
    if parsed.key != principal.sub and not may_read_any(principal):
        raise ChannelError("channel_forbidden", "a user channel is followed by that user only")
    return user_channel(engine.region, parsed.key)
