"""The cart's rules, one example each. Every delta and state that travels goes through the codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt import codec
from crdt.cart import MAX_QUANTITY, Cart, ClosedCartError, Line, RejectedEdit
from crdt.dots import Dot, new_replica_id
from crdt.hlc import Timestamp
from tests import crdt_profiles  # noqa: F401  (registers and loads the Hypothesis profile)
from tests.crdt_strategies import through_the_wire


def wire(value: Cart) -> Cart:
    out: Cart = through_the_wire(value)
    return out


class Device:
    """One replica of the cart: it applies its own deltas and returns them for sending."""

    def __init__(self, replica: str, cart: Cart | None = None) -> None:
        self.replica = replica
        self.cart = Cart.new() if cart is None else wire(cart)
        self.wall = 1_000

    def ts(self, wall: int | None = None) -> Timestamp:
        self.wall += 1
        return Timestamp(self.wall if wall is None else wall, 0, self.replica)

    def do(self, delta: Cart) -> Cart:
        delta = wire(delta)
        self.cart.apply(delta)
        return delta

    def add(self, sku: str, amount: int = 1) -> Cart:
        return self.do(self.cart.add(self.replica, sku, amount))

    def set(self, sku: str, quantity: int, wall: int | None = None) -> Cart:
        return self.do(self.cart.set(self.replica, sku, quantity, self.ts(wall)))

    def remove(self, sku: str) -> Cart:
        return self.do(self.cart.remove(self.replica, sku))

    def close(self) -> Cart:
        return self.do(self.cart.close(self.replica))

    def receive(self, *deltas: Cart) -> None:
        for delta in deltas:
            self.cart.apply(wire(delta))


def pair() -> tuple[Device, Device]:
    return Device("phone"), Device("laptop")


def test_adding_to_the_cart_increments_the_line() -> None:
    phone, _ = pair()
    phone.add("tea")
    phone.add("tea", 2)
    assert phone.cart.value() == {"tea": 3}


def test_concurrent_adds_on_two_devices_are_both_kept() -> None:
    phone, laptop = pair()
    a, b = phone.add("tea"), laptop.add("tea")
    phone.receive(b)
    laptop.receive(a)
    assert phone.cart.value() == laptop.cart.value() == {"tea": 2}
    assert phone.cart == laptop.cart


def test_setting_the_quantity_replaces_it_and_cancels_the_adds_it_has_seen() -> None:
    phone, laptop = pair()
    laptop.receive(phone.add("tea"), phone.add("tea"))
    d = laptop.set("tea", 5)
    phone.receive(d)
    assert phone.cart.value() == laptop.cart.value() == {"tea": 5}


def test_concurrent_sets_of_the_same_value_give_that_value_not_the_sum() -> None:
    phone, laptop = pair()
    laptop.receive(phone.add("tea"))
    a, b = phone.set("tea", 3), laptop.set("tea", 3)
    phone.receive(b)
    laptop.receive(a)
    assert phone.cart.value() == laptop.cart.value() == {"tea": 3}
    assert phone.cart.conflicts() == {}


def test_of_two_concurrent_sets_the_later_by_clock_wins_and_the_loser_is_a_visible_conflict() -> None:
    phone, laptop = pair()
    a = phone.set("tea", 5, wall=2_000)
    b = laptop.set("tea", 2, wall=1_500)
    phone.receive(b)
    laptop.receive(a)
    for device in (phone, laptop):
        assert device.cart.value() == {"tea": 5}
        assert device.cart.line("tea") == Line(5, (2,))
        assert device.cart.conflicts() == {"tea": (2,)}


def test_a_clock_tie_between_concurrent_sets_is_broken_by_replica_id() -> None:
    a_device, b_device = Device("a"), Device("b")
    a = a_device.set("tea", 7, wall=2_000)
    b = b_device.set("tea", 4, wall=2_000)
    a_device.receive(b)
    b_device.receive(a)
    assert a_device.cart.value() == b_device.cart.value() == {"tea": 4}  # Timestamp(…, "b") > (…, "a")
    assert a_device.cart.conflicts() == {"tea": (7,)}


def test_setting_again_after_a_conflict_resolves_it() -> None:
    phone, laptop = pair()
    a, b = phone.set("tea", 5), laptop.set("tea", 2)
    phone.receive(b)
    laptop.receive(a, phone.set("tea", 4))
    assert laptop.cart.value() == {"tea": 4}
    assert laptop.cart.conflicts() == {}


def test_a_set_concurrent_with_an_add_gives_the_set_plus_the_add() -> None:
    phone, laptop = pair()
    laptop.receive(phone.add("tea"))
    a = phone.add("tea")
    b = laptop.set("tea", 3)
    phone.receive(b)
    laptop.receive(a)
    assert phone.cart.value() == laptop.cart.value() == {"tea": 4}


def test_removing_a_line_removes_what_the_device_has_seen() -> None:
    phone, laptop = pair()
    laptop.receive(phone.add("tea"), phone.add("milk"))
    phone.receive(laptop.set("tea", 4))
    laptop.receive(phone.remove("tea"))
    assert phone.cart.value() == laptop.cart.value() == {"milk": 1}
    assert phone.cart == laptop.cart


def test_a_stale_device_that_reconnects_never_brings_a_removed_line_back() -> None:
    phone, laptop = pair()
    laptop.receive(phone.add("tea", 2))
    stale = laptop.cart.copy()  # the laptop goes offline holding the line
    phone.remove("tea")
    phone.receive(stale)  # it comes back with its whole old state
    assert phone.cart.value() == {}
    laptop.receive(phone.cart)  # and takes in the phone's state
    assert laptop.cart.value() == {}
    assert laptop.cart == phone.cart


def test_a_new_add_concurrent_with_a_remove_wins_with_only_the_new_add() -> None:
    phone, laptop = pair()
    laptop.receive(phone.add("tea", 3))
    a = phone.remove("tea")
    b = laptop.add("tea")
    phone.receive(b)
    laptop.receive(a)
    assert phone.cart.value() == laptop.cart.value() == {"tea": 1}


def test_deltas_arriving_out_of_order_or_twice_give_the_same_cart() -> None:
    phone, laptop = pair()
    deltas = [phone.add("tea"), phone.add("tea"), phone.set("tea", 7), phone.add("milk"), phone.remove("tea")]
    for delta in [*reversed(deltas), *deltas]:
        laptop.receive(delta)
    assert laptop.cart == phone.cart
    assert laptop.cart.value() == {"milk": 1}


def test_a_quantity_is_never_below_zero() -> None:
    phone, _ = pair()
    for bad in (0, -1, MAX_QUANTITY + 1, True, 1.5):
        with pytest.raises(ValueError):
            phone.cart.add("phone", "tea", bad)  # type: ignore[arg-type]
    for bad in (-1, MAX_QUANTITY + 1, False):
        with pytest.raises(ValueError):
            phone.cart.set("phone", "tea", bad, phone.ts())
    payload = codec.to_dict(phone.cart.add("phone", "tea"))
    payload["s"][1][1][2] = -3  # a negative amount forged on the wire
    with pytest.raises(codec.CodecError):
        codec.from_dict(payload)


def test_a_line_set_to_zero_is_not_in_the_value_but_keeps_its_conflicts() -> None:
    phone, laptop = pair()
    a, b = phone.set("tea", 0, wall=2_000), laptop.set("tea", 2, wall=1_000)
    phone.receive(b)
    assert phone.cart.value() == {}
    assert phone.cart.lines() == {"tea": Line(0, (2,))}
    laptop.receive(a)
    assert laptop.cart == phone.cart


def test_checking_out_closes_the_cart_and_later_local_edits_raise() -> None:
    phone, laptop = pair()
    laptop.receive(phone.add("tea", 2))
    laptop.receive(phone.close())
    assert phone.cart.closed and laptop.cart.closed
    assert laptop.cart.value() == {"tea": 2}
    for device in (phone, laptop):
        with pytest.raises(ClosedCartError):
            device.cart.add(device.replica, "tea")
        with pytest.raises(ClosedCartError):
            device.cart.set(device.replica, "tea", 1, device.ts())
        with pytest.raises(ClosedCartError):
            device.cart.remove(device.replica, "tea")
        with pytest.raises(ClosedCartError):
            device.cart.close(device.replica)


def test_edits_the_checkout_had_not_seen_are_refused_by_the_merge_and_listed() -> None:
    phone, laptop = pair()
    laptop.receive(phone.add("tea", 2))
    close = phone.close()
    late = [laptop.add("tea"), laptop.add("milk"), laptop.set("tea", 9)]  # the laptop is offline
    phone.receive(*late)
    laptop.receive(close)
    for device in (phone, laptop):
        assert device.cart.value() == {"tea": 2}
        assert {(e.sku, e.kind, e.quantity) for e in device.cart.rejected_edits()} == {
            ("milk", "add", 1),
            ("tea", "set", 9),  # (the laptop's own +1 was cancelled by its set: not listed)
            ("tea", "cancel", 2),  # the set cancelled the checked-out add: refused too
        }
    assert phone.cart == laptop.cart


def test_a_remove_the_checkout_had_not_seen_is_refused() -> None:
    phone, laptop = pair()
    laptop.receive(phone.add("tea", 2))
    close = phone.close()
    phone.receive(laptop.remove("tea"))
    laptop.receive(close)
    assert phone.cart.value() == laptop.cart.value() == {"tea": 2}
    [edit] = phone.cart.rejected_edits()
    assert edit == RejectedEdit("tea", "cancel", Dot("phone", 1), 2)


def test_a_device_that_only_received_the_checkout_shows_the_checked_out_cart() -> None:
    phone, laptop = pair()
    phone.add("tea", 2)
    laptop.receive(phone.close())  # never saw the add itself
    assert laptop.cart.value() == {"tea": 2}
    assert laptop.cart.rejected_edits() == []


def test_concurrent_checkouts_freeze_the_union_of_what_the_devices_had_seen() -> None:
    phone, laptop = pair()
    tea, milk = phone.add("tea"), laptop.add("milk")
    a, b = phone.close(), laptop.close()
    phone.receive(b)
    laptop.receive(a)
    assert phone.cart.value() == laptop.cart.value() == {"tea": 1, "milk": 1}
    phone.receive(milk)  # the live carts too, for equal states
    laptop.receive(tea)
    assert phone.cart.value() == laptop.cart.value() == {"tea": 1, "milk": 1}
    assert phone.cart == laptop.cart


def test_an_open_cart_has_no_rejected_edits() -> None:
    phone, _ = pair()
    phone.add("tea")
    assert not phone.cart.closed
    assert phone.cart.rejected_edits() == []


def test_live_lines_are_the_lines_until_a_checkout_then_what_the_edits_made() -> None:
    phone, laptop = pair()
    laptop.receive(phone.add("tea", 2), phone.set("milk", 0))
    assert phone.cart.live_lines() == phone.cart.lines() == {"tea": Line(2, ()), "milk": Line(0, ())}
    phone.close()
    late = laptop.add("tea", 3)
    phone.receive(late, laptop.remove("milk"))
    assert phone.cart.lines() == {"tea": Line(2, ()), "milk": Line(0, ())}
    assert phone.cart.live_lines() == {"tea": Line(5, ())}


def test_mutators_return_a_delta_and_leave_the_cart_unchanged() -> None:
    phone, _ = pair()
    phone.add("tea")
    before = phone.cart.copy()
    phone.cart.add("phone", "tea")
    phone.cart.set("phone", "tea", 3, phone.ts())
    phone.cart.remove("phone", "tea")
    phone.cart.close("phone")
    assert phone.cart == before


def test_applying_a_delta_does_not_share_state_with_it() -> None:
    phone, laptop = pair()
    delta = phone.add("tea")
    copy = wire(delta)
    laptop.receive(delta)
    laptop.add("tea")
    laptop.set("tea", 4)
    assert delta == copy


def test_equality_is_structural_not_by_value() -> None:
    phone, laptop = pair()
    phone.add("tea", 2)
    laptop.add("tea")
    laptop.add("tea")
    assert phone.cart.value() == laptop.cart.value()
    assert phone.cart != laptop.cart


def test_a_one_line_delta_does_not_grow_with_the_number_of_lines() -> None:
    sizes = []
    for lines in (300, 3_000):  # counters of both sizes take 3 bytes in MessagePack
        phone, laptop = Device(new_replica_id()), Device(new_replica_id())
        for i in range(lines):
            phone.add(f"sku-{i:05d}")
        laptop.receive(phone.cart)
        for i in range(lines):
            laptop.add(f"sku-{i:05d}")  # every line now holds dots of two replicas
        phone.receive(laptop.cart)
        for i in range(lines // 2):
            phone.remove(f"sku-{i:05d}")  # and the context has gaps
        last = f"sku-{lines - 1:05d}"
        set_delta = phone.cart.set(phone.replica, last, 3, phone.ts(wall=1_700_000_000_000))
        assert len(list(set_delta.context.dots())) == 3  # the line's two adds and the set itself
        sizes.append(
            (
                len(codec.to_msgpack(phone.cart.add(phone.replica, last))),
                len(codec.to_msgpack(set_delta)),
                len(codec.to_msgpack(phone.cart.remove(phone.replica, last))),
            )
        )
    small, large = sizes
    assert small == large
    assert max(large) < 100


def test_the_worked_example_of_the_module_docstring_holds() -> None:
    cart = Cart.new()
    d1 = cart.add("P", "tea")
    cart.apply(d1)
    laptop = cart.merge(Cart.new())
    d2 = cart.add("P", "tea")
    cart.apply(d2)
    d3 = laptop.set("L", "tea", 5, Timestamp(1, 0, "L"))
    laptop.apply(d3)
    cart.apply(d3)
    assert cart.value() == {"tea": 6}
    d4 = cart.remove("P", "tea")
    assert set(d4.context.dots()) == {Dot("P", 2), Dot("L", 1), Dot("P", 3)}
    cart.apply(d4)
    laptop.apply(d2)
    laptop.apply(d4)
    assert cart == laptop
    assert cart.value() == {}


def test_merge_is_idempotent_commutative_and_associative_on_examples() -> None:
    phone, laptop, tablet = Device("p"), Device("l"), Device("t")
    phone.add("tea")
    laptop.receive(phone.cart)
    laptop.set("tea", 3)
    tablet.add("tea", 2)
    phone.remove("tea")
    tablet.close()
    a, b, c = phone.cart, laptop.cart, tablet.cart
    assert a.merge(a) == a
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(b).merge(c).closed
    assert a.merge(b).merge(c).value() == {"tea": 2}  # the tablet had seen only its own add


def test_inputs_are_validated() -> None:
    cart = Cart.new()
    with pytest.raises(ValueError):
        cart.add("", "tea")
    with pytest.raises(ValueError):
        cart.add("phone", "")
    with pytest.raises(ValueError):
        cart.add("phone", "x" * 201)
    with pytest.raises(ValueError):
        cart.set("phone", "tea", 1, Timestamp(-1, 0, "phone"))
    with pytest.raises(ValueError):
        cart.set("phone", "tea", 1, Timestamp(5, 0, "laptop"))  # a replica stamps its own writes


@pytest.mark.parametrize(
    "state",
    [
        None,
        [],
        [[], []],
        [["not base85!!"], [], []],
        [[".a", ".a"], [], []],  # a replica twice in the table
        [[".a"], ["tea", [], []], []],  # an empty line
        [[".a"], ["tea", [0, 1, 1], [], "tea", [0, 2, 1], []], []],  # a line twice
        [[".a"], ["tea", [0, 1, 1], [], "milk", [0, 1, 1], []], []],  # a dot twice
        [[".a"], ["tea", [1, 1, 1], []], []],  # replica index out of the table
        [[".a"], ["tea", [0, 0, 1], []], []],  # counter 0
        [[".a"], ["tea", [0, 1, True], []], []],  # a bool is not a number
        [[".a"], ["tea", [], [0, 1, 3, 5]], []],  # a set entry is five numbers
        [[".a"], ["tea", [], [0, 1, 3, -5, 0]], []],  # a wall clock before 1970
        [[".a"], [], [0, 0]],  # a context entry is never 0
        [[".a"], [], [0, 1, 0, 2]],  # a replica twice in the version vector
        [[".a"], [], [], [], []],  # a snapshot without its close dot
        [[".a"], ["tea", [0, 2**53, 1], []], []],  # a counter past 2**53 - 1 (not encodable everywhere)
        [[".a"], ["tea", [], [0, 2**64, 3, 5, 0]], []],
        [[".a"], ["tea", [], [0, 1, 3, 2**53, 0]], []],  # a wall clock past it
        [[".a"], ["tea", [], [0, 1, 3, 5, 2**63]], []],  # a logical count past it
        [[".a"], [], [0, 2**64]],  # a version vector entry past it
        [[".a"], [], [0, -(2**53)]],  # a cloud dot past it
    ],
)
def test_the_decoder_refuses_malformed_states(state: object) -> None:
    with pytest.raises(codec.CodecError):
        codec.from_dict({"t": "cart", "v": 1, "s": state})


def test_a_replica_that_used_every_counter_mints_no_more_and_its_state_still_encodes() -> None:
    top = 2**53 - 1
    cart = codec.from_dict({"t": "cart", "v": 1, "s": [[".a"], ["tea", [0, top, 1], []], [0, top]]})
    assert cart.value() == {"tea": 1}
    assert codec.from_msgpack(codec.to_msgpack(cart)) == cart
    with pytest.raises(ValueError, match="every counter"):
        cart.add("a", "tea")
    assert cart.add("b", "tea").value() == {"tea": 1}


def test_an_unknown_cart_version_is_an_error() -> None:
    payload = codec.to_dict(Cart.new())
    payload["v"] = 2
    with pytest.raises(codec.CodecError):
        codec.from_dict(payload)


@st.composite
def reachable_carts(draw: st.DrawFn) -> tuple[Cart, Cart, Cart]:
    """Three replicas after random edits and exchanges: states a real system can reach."""
    devices = [Device(name) for name in ("a", "b", "c")]
    for _ in range(draw(st.integers(0, 14))):
        device = draw(st.sampled_from(devices))
        kind = draw(st.sampled_from(["add", "add", "set", "remove", "sync", "sync", "close"]))
        sku = draw(st.sampled_from(["tea", "jam"]))
        if kind == "sync":
            device.receive(draw(st.sampled_from(devices)).cart)
        elif device.cart.closed:
            continue
        elif kind == "add":
            device.add(sku, draw(st.integers(1, 3)))
        elif kind == "set":
            device.set(sku, draw(st.integers(0, 3)), wall=draw(st.integers(1, 4)))
        elif kind == "remove":
            device.remove(sku)
        else:
            device.close()
    a, b, c = (device.cart for device in devices)
    return a, b, c


def assert_store_invariants(cart: Cart) -> None:
    """What the joins rely on (see ``CartState``): no line is empty, every entry dot is in the context,
    the cloud holds only dots above the vector and not next to it, and the index ``where`` is either
    not built or maps every entry dot to its line's SKU, its ``stale`` other keys being dots in the
    context that no line holds."""
    for store in (cart._live, cart._closed):
        if store is None:
            continue
        entries = {dot: sku for sku, line in store.lines.items() for dot in line}
        assert all(store.lines.values())
        assert all(store.seen(dot) for dot in entries)
        assert all(counter > store.vv.get(replica, 0) + 1 for replica, counter in store.cloud)
        if store.where is None:
            assert store.stale == 0
            continue
        assert all(store.where.get(dot) == sku for dot, sku in entries.items())
        stale = store.where.keys() - entries.keys()
        assert store.stale == len(stale)
        assert all(store.seen(dot) and not store.holds(dot) for dot in stale)
        assert all(store.holds(dot) for dot in entries)


def test_a_decoded_cart_builds_its_dot_index_only_when_a_join_needs_it() -> None:
    phone = Device("phone")
    for sku in ("tea", "jam", "rye"):
        phone.add(sku)
    laptop = Device("laptop", phone.cart)
    store = laptop.cart._live
    assert store.where is None  # decoding a state builds no index
    laptop.receive(phone.add("tea"), phone.set("tea", 4), phone.set("jam", 2))
    assert store.where is None  # adds land in their line, and a set finds what it cancels there
    assert laptop.cart.value() == {"tea": 4, "jam": 2, "rye": 1}
    laptop.receive(phone.remove("rye"))  # a remove names no line: the index finds its dots
    assert store.where is not None
    assert laptop.cart.value() == phone.cart.value() == {"tea": 4, "jam": 2}
    assert laptop.cart == phone.cart
    assert_store_invariants(laptop.cart)


@pytest.mark.parametrize("lazy", [True, False], ids=["decoded deltas", "built deltas"])
def test_stale_index_keys_are_never_taken_for_entries_and_do_not_pile_up(lazy: bool) -> None:
    """A set cancels the entries of its line in the line, leaving their index keys stale: whether it
    arrives decoded (joined from its entries) or as a store, and whatever comes next."""

    def deliver(cart: Cart, delta: Cart) -> Cart:
        cart.apply(codec.from_msgpack(codec.to_msgpack(delta)) if lazy else delta.copy())
        return delta

    phone, laptop = Cart.new(), Cart.new()
    skus = [f"sku-{i}" for i in range(8)]
    for sku in skus:
        deliver(laptop, deliver(phone, phone.add("P", sku)))
    deliver(laptop, laptop.remove("L", skus[-1]))  # a remove names no line: builds the index
    store = laptop._live
    assert store.where is not None
    dropped = False
    for n in range(1, 80):
        deliver(laptop, laptop.set("L", "sku-0", n, Timestamp(n, 0, "L")))
        if store.where is None:
            dropped = True
        else:
            assert store.stale <= max(32, len(store.where) - store.stale)
        assert_store_invariants(laptop)
    assert dropped  # mostly stale: dropped, to be built again when needed
    deliver(laptop, laptop.remove("L", skus[-2]))
    assert store.where is not None
    deliver(laptop, laptop.set("L", "sku-0", 5, Timestamp(100, 0, "L")))
    assert store.stale == 1
    assert_store_invariants(laptop)
    # A stale key is neither written as an entry nor left out of the context on the wire,
    assert wire(laptop) == laptop
    # nor taken for an entry by a join or by a checkout's rejected edits.
    deliver(phone, laptop)
    assert phone == laptop
    assert phone.value() == laptop.value() == {sku: 1 for sku in skus[1:-2]} | {"sku-0": 5}
    close = deliver(laptop, laptop.close("L"))
    deliver(phone, phone.set("P", "sku-0", 9, Timestamp(200, 0, "P")))
    deliver(laptop, phone)
    assert [edit.kind for edit in laptop.rejected_edits()] == ["cancel", "set"]
    assert_store_invariants(laptop)
    assert wire(close) == close


def test_decoded_carts_share_their_skus_and_replica_tables() -> None:
    phone, laptop = pair()
    phone.add("tea")
    laptop.receive(phone.cart)
    laptop.add("tea")
    payload = codec.to_msgpack(laptop.cart)
    a, b = codec.from_msgpack(payload), codec.from_msgpack(payload)
    (sku_a,), (sku_b,) = a._live.lines, b._live.lines
    assert sku_a == sku_b == "tea" and sku_a is sku_b
    assert a == b == laptop.cart


@given(reachable_carts())
def test_merge_is_a_join_on_reachable_carts(carts: tuple[Cart, Cart, Cart]) -> None:
    a, b, c = carts
    assert a.merge(a) == a
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(b).merge(a) == a.merge(b)  # a ⊑ a ⊔ b
    assert wire(a.merge(b)) == a.merge(b)
    for cart in (a, b, c, a.merge(b), a.merge(b).merge(c), wire(a.merge(b))):
        assert_store_invariants(cart)


@given(reachable_carts())
def test_a_sync_reply_brings_a_replica_exactly_what_a_whole_state_would(
    carts: tuple[Cart, Cart, Cart],
) -> None:
    for hub in carts:
        for device in carts:
            reply = hub.sync_reply(device.context)
            expected = device.merge(hub)
            if reply is None:
                assert expected == device
                continue
            assert device.merge(reply) == expected
            assert device.merge(wire(reply)) == expected  # as it travels
            assert reply.entry_count() <= hub.entry_count()
            assert_store_invariants(reply)


def test_a_sync_reply_leaves_out_what_the_replica_already_holds() -> None:
    hub = Cart.new()
    for n in range(20):
        hub = hub.merge(hub.add("phone", f"sku-{n}"))
    laptop = hub.copy()  # saw all twenty
    hub = hub.merge(hub.add("phone", "sku-new"))
    hub = hub.merge(hub.remove("phone", "sku-3"))
    reply = hub.sync_reply(laptop.context)
    assert reply is not None
    assert reply.entry_count() == 1  # the new line only, not the nineteen the laptop holds
    assert laptop.merge(reply) == laptop.merge(hub)
    assert "sku-3" not in laptop.merge(reply).value()
    assert hub.sync_reply(laptop.merge(reply).context) is None


@given(reachable_carts(), st.data())
def test_a_decoded_delta_joins_the_same_as_its_built_store(
    carts: tuple[Cart, Cart, Cart], data: st.DataObject
) -> None:
    """The decoder keeps a delta as its entries and :meth:`Cart.apply` joins them directly: that
    shortcut must give exactly what joining the delta's full store gives, on any reachable cart."""
    target, source, _ = carts
    if source.closed:  # a closed cart's payload is always built: no shortcut to compare
        return
    replica = data.draw(st.sampled_from(["a", "b", "c", "d"]))
    sku = data.draw(st.sampled_from(["tea", "jam", "rye"]))
    kind = data.draw(st.sampled_from(["add", "set", "remove", "whole state"]))
    if kind == "whole state":  # a small cart's state decodes the same way as a delta
        delta = source
    elif kind == "add":
        delta = source.add(replica, sku, data.draw(st.integers(1, 3)))
    elif kind == "set":
        delta = source.set(
            replica, sku, data.draw(st.integers(0, 3)), Timestamp(data.draw(st.integers(1, 4)), 0, replica)
        )
    else:
        delta = source.remove(replica, sku)
    payload = codec.to_msgpack(delta)
    lazy, built = codec.from_msgpack(payload), codec.from_msgpack(payload)
    assert lazy._delta is not None  # the shortcut is what this test exercises
    assert built == delta  # comparing builds the store
    assert built._delta is None
    via_shortcut, via_store = target.copy(), target.copy()
    via_shortcut.apply(lazy)
    via_store.apply(built)
    assert via_shortcut == via_store
    assert wire(via_shortcut) == via_store
    assert_store_invariants(via_shortcut)
