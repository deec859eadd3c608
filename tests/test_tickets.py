"""Real-time tickets (hub/tickets.py): tokens in URLs are refused by default; a ticket opens one
connection, once, on any node, for 30 seconds."""

from __future__ import annotations

import time

import pytest

from hub.auth import Principal
from hub.tickets import issue_ticket, read_ticket
from tests.conftest import JWT_SECRET, Hub, hub_settings, running_hub
from tests.realtime_helpers import sse_stream, ws_client

POLL = "/api/v1/poll?channels=user:alice&timeout=0"


async def ticket_for(hub: Hub, bearer: str) -> str:
    status, body, _ = await hub.call("POST", "/api/v1/realtime/tickets", token=bearer)
    assert status == 201, body
    assert body["ttl"] == 30 and body["expires_at"]
    return str(body["ticket"])


async def test_a_token_in_a_url_is_refused_by_default_on_every_transport(hub):
    status, body, _ = await hub.call("GET", f"{POLL}&access_token={hub.alice}")
    assert (status, body["code"]) == (401, "token_in_url_refused")
    async with hub.session.get(
        f"{hub.base}/api/v1/sse?channels=user:alice&access_token={hub.alice}"
    ) as response:
        assert response.status == 401 and (await response.json())["code"] == "token_in_url_refused"
    with pytest.raises(Exception) as refused:
        async with ws_client(hub, query=f"access_token={hub.alice}"):
            pass
    assert getattr(refused.value, "status", None) == 401


async def test_a_ticket_opens_one_connection_as_its_user_and_only_once(hub):
    ticket = await ticket_for(hub, hub.alice)
    async with sse_stream(hub, "user:alice", query=f"ticket={ticket}") as sse:
        _, ready = await sse.opening()
        assert ready.event == "ready"
    status, body, _ = await hub.call("GET", f"{POLL}&ticket={ticket}")
    assert (status, body["code"]) == (401, "ticket_used")
    fresh = await ticket_for(hub, hub.alice)
    async with ws_client(hub, query=f"ticket={fresh}") as ws:
        assert (await ws.subscribe("user:alice"))["type"] == "subscribed"
    other = await ticket_for(hub, hub.bob)
    status, body, _ = await hub.call("GET", f"{POLL}&ticket={other}")  # bob's ticket, alice's channel
    assert (status, body["code"]) == (403, "channel_forbidden")


async def test_tickets_need_a_token_and_forged_or_stale_ones_are_refused(hub):
    status, body, _ = await hub.call("POST", "/api/v1/realtime/tickets")
    assert (status, body["code"]) == (401, "unauthenticated")
    ticket = await ticket_for(hub, hub.alice)
    body_part, _, signature = ticket.partition(".")
    forged = body_part[:-2] + ("AA" if body_part[-2:] != "AA" else "BB") + "." + signature
    status, body, _ = await hub.call("GET", f"{POLL}&ticket={forged}")
    assert (status, body["code"]) == (401, "invalid_ticket")
    alice = Principal("alice", frozenset({"customer"}), int(time.time()) + 3600)
    stale, _ = issue_ticket(JWT_SECRET, alice, now=time.time() - 60)
    status, body, _ = await hub.call("GET", f"{POLL}&ticket={stale}")
    assert (status, body["code"]) == (401, "ticket_expired")


def test_a_ticket_never_outlives_its_token_and_carries_its_principal():
    soon = Principal("alice", frozenset({"customer"}), int(time.time()) + 5)
    ticket, expires = issue_ticket(JWT_SECRET, soon)
    assert expires == soon.expires_at
    principal, jti, _ = read_ticket(JWT_SECRET, ticket)
    assert principal == soon and len(jti) == 32


async def test_a_ticket_is_used_once_across_nodes(pg):
    async with running_hub(hub_settings(pg)) as first, running_hub(hub_settings(pg)) as second:
        ticket = await ticket_for(first, first.alice)
        status, _, _ = await second.call("GET", f"{POLL}&ticket={ticket}")
        assert status == 200
        status, body, _ = await first.call("GET", f"{POLL}&ticket={ticket}")
        assert (status, body["code"]) == (401, "ticket_used")


async def test_tokens_in_urls_work_where_they_are_allowed(tmp_path):
    async with running_hub(hub_settings(str(tmp_path / "h.sqlite3"), tokens_in_urls=True)) as hub:
        status, _, _ = await hub.call("GET", f"{POLL}&access_token={hub.alice}")
        assert status == 200
