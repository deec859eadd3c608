"""A live WebSocket's credential: its remaining ttl (``session``), an in-band ``refresh`` without
reconnecting, subscriptions re-checked against the new token, and the grace after expiry before 4102.
Real hub, real WebSocket connections (hub/transports/ws_session.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import token
from tests.realtime_helpers import eu_hub, ws_client

GRACE = 1.5


@pytest.fixture
async def hub(tmp_path):
    async with eu_hub(str(tmp_path / "hub.sqlite3"), token_refresh_grace_seconds=GRACE) as running:
        yield running


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def test_session_tells_the_token_s_remaining_ttl(hub):
    async with ws_client(hub, headers=bearer(token("alice", "customer", ttl=600))) as ws:
        reply = await ws.request({"type": "session", "id": "s"})
        assert reply["type"] == "session" and reply["id"] == "s"
        assert (reply["sub"], reply["roles"], reply["grace"]) == ("alice", ["customer"], GRACE)
        assert 590 <= reply["ttl"] <= 600
    async with ws_client(hub) as anonymous:
        reply = await anonymous.request({"type": "session"})
        assert (reply["sub"], reply["roles"], reply["ttl"]) == (None, [], None)


async def test_a_refresh_keeps_the_connection_past_the_first_token_s_expiry(
    hub,
):
    async with ws_client(hub, headers=bearer(token("alice", "customer", ttl=2))) as ws:
        await ws.subscribe()
        reply = await ws.request({"type": "refresh", "id": 7, "token": token("alice", "customer", ttl=3600)})
        assert reply["type"] == "refreshed" and reply["id"] == 7 and 3590 <= reply["ttl"] <= 3600
        await asyncio.sleep(2 + GRACE + 1.0)  # past the first token's expiry and its grace
        # still open, and nothing came in between (no token_expired notice for the old token)
        await ws.assert_nothing_pending()
        assert (await ws.request({"type": "session"}))["ttl"] > 3500


async def test_an_expired_token_gets_a_notice_then_4102_after_the_grace(hub):
    async with ws_client(hub, headers=bearer(token("alice", "customer", ttl=1))) as ws:
        started = time.monotonic()
        notice = await ws.recv(within=4)
        assert notice["type"] == "token_expired" and 0 < notice["grace"] <= GRACE
        noticed = time.monotonic() - started
        # within the grace the connection still answers
        assert await ws.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
        assert await ws.close_code(within=GRACE + 2) == 4102
        closed = time.monotonic() - started
    assert closed - noticed >= GRACE - 1.1  # (the beat ticks every ~second)


async def test_a_refresh_within_the_grace_saves_the_connection(hub):
    async with ws_client(hub, headers=bearer(token("alice", "customer", ttl=1))) as ws:
        assert (await ws.recv(within=4))["type"] == "token_expired"
        reply = await ws.request({"type": "refresh", "token": token("alice", "customer", ttl=600)})
        assert reply["type"] == "refreshed"
        await asyncio.sleep(GRACE + 1.0)
        await ws.assert_nothing_pending()


@pytest.mark.parametrize(
    ("credential", "code"),
    [
        ("not-a-jwt", "invalid_token"),
        (token("alice", "customer", ttl=-60), "token_expired"),
        (token("mallory", "customer"), "subject_mismatch"),
        ("", "invalid_token"),
        (None, "invalid_token"),
    ],
    ids=["garbage", "expired", "another-subject", "empty", "missing"],
)
async def test_a_refused_refresh_changes_nothing(hub, credential, code):
    async with ws_client(hub, headers=bearer(token("alice", "customer", ttl=600))) as ws:
        await ws.subscribe()
        message = {"type": "refresh", "id": "r"} | ({} if credential is None else {"token": credential})
        reply = await ws.request(message)
        assert (reply["type"], reply["code"], reply["id"]) == ("error", code, "r")
        after = await ws.request({"type": "session"})
        assert after["sub"] == "alice" and 590 <= after["ttl"] <= 600
        await hub.stock(await _product(hub), "par-1", 4)
        assert (await ws.events(1))[0]["data"]["on_hand"] == 4  # the subscription carries on


async def test_an_anonymous_connection_cannot_become_a_user_s_by_refresh(hub):
    async with ws_client(hub) as ws:
        reply = await ws.request({"type": "refresh", "token": token("alice", "customer")})
        assert (reply["type"], reply["code"]) == ("error", "subject_mismatch")


async def test_a_subscription_the_new_token_may_not_follow_is_ended_with_a_code(hub):
    service = token("checkout", "service", ttl=600)
    async with ws_client(hub, headers=bearer(service)) as ws:
        assert (await ws.subscribe("user:alice"))["type"] == "subscribed"  # service reads any user
        assert (await ws.subscribe("user:checkout"))["type"] == "subscribed"
        await ws.send({"type": "refresh", "id": "r", "token": token("checkout", "customer", ttl=600)})
        ended = await ws.recv()
        assert ended == {
            "type": "unsubscribed",
            "channel": "user:alice",
            "code": "channel_forbidden",
            "message": ended["message"],
        }
        assert (await ws.recv())["type"] == "refreshed"
        # user:alice is gone, the connection's own user channel stays
        reply = await ws.request({"type": "unsubscribe", "channel": "user:alice"})
        assert (reply["type"], reply["code"]) == ("error", "not_subscribed")
        assert (await ws.request({"type": "unsubscribe", "channel": "user:checkout"}))[
            "type"
        ] == "unsubscribed"


async def _product(hub) -> str:
    status, body, _ = await hub.call("GET", "/api/v1/products?limit=1")
    if status == 200 and body["items"]:
        return str(body["items"][0]["id"])
    return str((await hub.product("SKU-R"))["id"])
