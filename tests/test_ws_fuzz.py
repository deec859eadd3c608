"""A hypothesis fuzz of WebSocket messages against a real hub over real connections: whatever a client
sends — known and unknown types, known and unknown fields, values of every JSON and MessagePack kind,
frames that do not decode — the hub answers each message (a reply or an error with a code), never
fails a connection with 1011, never answers ``internal_error``, and holds no memory for a connection
once it is closed.

The hub runs on an event loop of its own thread (tests/hub_thread.py), so that hypothesis (which
drives plain functions) can send its examples to it over the socket.
"""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections.abc import Iterator
from typing import Any, TypeVar

import aiohttp
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.keys import CONNECTIONS
from tests.conftest import Hub, token
from tests.hub_thread import HubThread

T = TypeVar("T")

TYPES = ["subscribe", "unsubscribe", "ping", "sync", "push", "session", "refresh", "hello", ""]
FIELDS = [
    "type",
    "id",
    "channel",
    "since",
    "recover",
    "cart",
    "review",
    "context",
    "mutation_id",
    "delta",
    "token",
]
CHANNELS = ["inventory:eu", "inventory:eu:x", "user:alice", "user:bob", "cart:", "reviews:eu", "nope:1", ""]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(CHANNELS),
    st.sampled_from(["00000000-0000-0000-0000-000000000000", "0:0", "ffffffff:99999999999", "latest"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(TYPES), st.text(max_size=12), st.integers())},
    optional={name: values for name in FIELDS[1:]} | {"extra": values},
)
# what a frame carries: a message, something that is not an object, or bytes that do not decode
frames = st.one_of(
    messages.map(lambda m: ("message", m)),
    values.map(lambda v: ("value", v)),
    st.binary(max_size=64).map(lambda b: ("bytes", b)),
)


@pytest.fixture(scope="module")
def hub_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubThread]:
    running = HubThread(tmp_path_factory.mktemp("fuzz") / "hub.sqlite3", region="eu")
    yield running
    running.close()


def _encode(kind: str, item: Any, binary: bool) -> tuple[str, Any]:
    """(aiohttp send method, payload) for one drawn frame on a JSON or a MessagePack connection."""
    if kind == "bytes":
        return ("send_bytes", item) if binary else ("send_str", item.decode("latin-1"))
    if binary:
        try:
            return "send_bytes", msgpack.packb(item, use_bin_type=True)
        except OverflowError:  # an integer MessagePack cannot hold: no client can send it; send a byte
            return "send_bytes", b"\xc1"  # that MessagePack never uses instead (malformed_frame)
    # json.dumps (not orjson): it writes lone surrogates and big integers as they are drawn
    return "send_str", json.dumps(item)


async def _exchange(hub: Hub, sent: list[tuple[str, Any]], binary: bool, credential: str | None) -> list[Any]:
    protocol = "synchub.msgpack" if binary else "synchub.json"
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    async with hub.session.ws_connect(
        hub.base + "/api/v1/ws", protocols=(protocol,), headers=headers, heartbeat=None
    ) as ws:
        for kind, item in sent:
            method, payload = _encode(kind, item, binary)
            await getattr(ws, method)(payload)
        barrier = {"type": "ping", "id": "barrier"}
        await (ws.send_bytes(msgpack.packb(barrier)) if binary else ws.send_str(json.dumps(barrier)))
        replies: list[Any] = []
        while True:
            frame = await asyncio.wait_for(ws.receive(), 10)
            if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise AssertionError(f"the hub closed the connection ({ws.close_code}) after {replies}")
            decoded = msgpack.unpackb(frame.data, raw=False) if binary else json.loads(frame.data)
            if decoded == {"type": "pong", "id": "barrier"}:
                return replies
            replies.append(decoded)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    derandomize=True,  # the same examples in every run: CI does not find a new one by chance
)
@given(
    sent=st.lists(frames, max_size=8),
    binary=st.booleans(),
    who=st.sampled_from([None, "customer", "service"]),
)
def test_any_messages_get_answers_and_never_an_internal_error(hub_thread, sent, binary, who):
    credential = None if who is None else token(f"fuzz-{who}", who)
    replies = hub_thread.run(_exchange(hub_thread.hub, sent, binary, credential))
    assert all(isinstance(reply, dict) and isinstance(reply.get("type"), str) for reply in replies), replies
    errors = [reply for reply in replies if reply["type"] == "error"]
    assert all(isinstance(e.get("code"), str) and e["code"] != "internal_error" for e in errors), errors
    # every frame got its answer: a reply each (subscriptions may add events and snapshots after theirs)
    answered = [r for r in replies if r["type"] not in ("event", "snapshot", "resync", "unsubscribed")]
    assert len(answered) >= len(sent), (sent, replies)


def test_closed_connections_leave_no_memory_behind(hub_thread):
    hub = hub_thread.hub
    sent = [("message", {"type": "subscribe", "channel": "inventory:eu", "id": n}) for n in range(5)]
    sent += [("bytes", b"\xff\x00garbage"), ("message", {"type": "push", "cart": "x", "delta": "y" * 2000})]

    async def rounds(count: int) -> None:
        for n in range(count):
            await _exchange(hub, sent, binary=n % 2 == 0, credential=token("mem", "customer"))
        for _ in range(100):  # the hub lets go of a connection when it sees it closed
            if not hub.app[CONNECTIONS]._watched:
                break
            await asyncio.sleep(0.02)

    hub_thread.run(rounds(50))  # warm: caches, pools and lazily built tables fill once
    gc.collect()
    tracemalloc.start(1)
    try:
        before = tracemalloc.take_snapshot()
        hub_thread.run(rounds(200))
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ours = [tracemalloc.Filter(True, "*/hub/*"), tracemalloc.Filter(True, "*/sync/*")]
    grown = sum(
        stat.size_diff
        for stat in after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename")
    )
    # 200 connections of ~7 messages each: a leak of even one small object per connection shows
    assert grown < 64 * 1024, f"the hub's code holds {grown} more bytes after 200 closed connections"
