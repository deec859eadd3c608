"""An event is encoded once per wire format and channel, however many connections it goes to."""

from __future__ import annotations

import msgpack
import orjson
import pytest

from crdt import codec
from crdt.cart import Cart
from crdt.hlc import Timestamp
from sync.broker import Position, Publication
from sync.channels import ChannelError, parse_channel
from sync.cursor import CursorError, parse_position
from sync.events import Event

DATA = {"product_id": "p1", "warehouse_id": "w1", "version": 3, "ts": 1_795_000_000_000_000}


def event() -> Event:
    return Event(Publication("inventory.eu", Position("ab12", 7), orjson.dumps(DATA)))


def test_each_encoding_is_built_once_and_then_shared() -> None:
    e = event()
    assert e.json("inventory:eu") is e.json("inventory:eu")
    assert e.msgpack("inventory:eu") is e.msgpack("inventory:eu")
    assert e.sse("inventory:eu") is e.sse("inventory:eu")
    assert e.json("inventory:eu") is not e.json("inventory:eu:other")


def test_the_three_encodings_carry_the_same_message() -> None:
    e = event()
    expected = {"type": "event", "channel": "inventory:eu", "position": "ab12:7", "data": DATA}
    assert orjson.loads(e.json("inventory:eu")) == expected
    assert msgpack.unpackb(e.msgpack("inventory:eu")) == expected
    sse = e.sse("inventory:eu").decode()
    assert sse.startswith("id: ab12:7\nevent: inventory\ndata: ") and sse.endswith("\n\n")
    assert orjson.loads(sse.split("data: ", 1)[1]) == expected


def cart_deltas() -> list[Cart]:
    """Deltas as devices push them (adds, sets, removes, a checkout) and a whole state."""
    phone, laptop = Cart.new(), Cart.new()
    deltas: list[Cart] = []
    for n in range(40):
        device, replica = (phone, "phone-1") if n % 2 else (laptop, "laptop-1")
        sku = f"sku-{n % 7}"
        if n % 5 == 4 and device.value():
            delta = device.remove(replica, next(iter(device.value())))
        elif n % 3 == 1:
            delta = device.set(replica, sku, n % 9, Timestamp(1_795_000_000_000 + n, n % 2, replica))
        else:
            delta = device.add(replica, sku, 1 + n % 3)
        phone.apply(delta)
        laptop.apply(delta)
        deltas.append(delta)
    deltas.append(phone.copy())
    deltas.append(phone.close("phone-1"))
    return deltas


@pytest.mark.parametrize("index", range(42))
def test_a_binary_frame_carries_a_cart_delta_as_the_codec_writes_it(index: int) -> None:
    """The JSON-safe form published is packed into the binary one as it is, not decoded and encoded
    again: the bytes must be the codec's own all the same."""
    delta = cart_deltas()[index]
    data = {"type": "cart.delta", "cart_id": "c1", "version": 3, "delta": codec.to_dict(delta), "ts": 1}
    e = Event(Publication("user.eu.3", Position("ab12", 7), orjson.dumps(data)))
    frame = msgpack.unpackb(e.msgpack("cart:c1"))
    assert frame["data"]["delta"] == codec.to_msgpack(delta)
    assert codec.from_msgpack(frame["data"]["delta"]) == delta
    assert {**frame["data"], "delta": None} == {**data, "delta": None}


@pytest.mark.parametrize(
    "name",
    [
        "inventory",
        "inventory:",
        "stock:eu",
        "inventory:EU",
        "inventory:eu:not-a-uuid",
        "inventory:eu:1:2",
        "x" * 200,
    ],
)
def test_malformed_channel_names_are_refused(name: str) -> None:
    with pytest.raises(ChannelError):
        parse_channel(name)


def test_a_product_channel_name_is_normalised() -> None:
    channel = parse_channel("inventory:eu:0B7C6E4A-1D2E-4F5A-8B9C-0D1E2F3A4B5C")
    assert channel.name == "inventory:eu:0b7c6e4a-1d2e-4f5a-8b9c-0d1e2f3a4b5c"
    assert channel.stream == "inventory.eu"


@pytest.mark.parametrize("text", ["", "ab12", "ab12:", ":5", "ab12:-1", "ab12:01", "a b:1", "ab12:1e3"])
def test_malformed_positions_are_refused(text: str) -> None:
    with pytest.raises(CursorError):
        parse_position(text)
