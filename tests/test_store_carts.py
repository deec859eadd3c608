"""The cart part of the Store contract: every guarantee of :mod:`storage.carts`, run on every backend.

Each test takes the ``store`` (or ``database_url``) fixture, so conftest runs it once on a SQLite file
and once on a real PostgreSQL database. Devices are real :class:`crdt.cart.Cart` replicas whose deltas
travel through the codec (JSON, as the hub reads them) before the store sees them. Besides the public
Store methods, the tests read the tables a refusal must leave alone (carts, cart_mutations, replicas)
through the store's own SQL seam, read-only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from typing import Any

import asyncpg
import pytest

from crdt import codec
from crdt.cart import Cart
from crdt.hlc import HybridClock, Timestamp
from storage.carts import (
    CartDocument,
    CartOwner,
    CartPush,
    CartRules,
    CheckoutOutcome,
    CheckoutResult,
    PushResult,
    PushStatus,
)
from storage.errors import IdempotencyMismatch, NotFound
from storage.factory import open_store
from storage.models import OutboxEntry, ReservationLineRequest
from storage.sql import SqlStore
from storage.streams import user_stream
from tests.conftest import seed, wait_for_lock_waiters

CART = "cart-1"
RULES = CartRules()
SKUS = ("tea", "milk", "rice", "salt")
_mutation_ids = itertools.count(1)


# -- helpers ------------------------------------------------------------------------------------


def wire(value: Cart) -> Cart:
    """``value`` as the hub receives it: the codec's dict, through JSON."""
    out = codec.from_dict(json.loads(json.dumps(codec.to_dict(value))))
    assert isinstance(out, Cart)
    return out


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Device:
    """One replica of a cart: it applies its own edits and returns their deltas, ready to push."""

    def __init__(self, replica: str, cart: Cart | None = None) -> None:
        self.replica = replica
        self.cart = Cart.new() if cart is None else wire(cart)
        self.clock = HybridClock(replica, now_ms)

    def _do(self, delta: Cart) -> Cart:
        delta = wire(delta)
        self.cart.apply(delta)
        return delta

    def add(self, sku: str, amount: int = 1) -> Cart:
        return self._do(self.cart.add(self.replica, sku, amount))

    def set(self, sku: str, quantity: int, wall_ms: int | None = None) -> Cart:
        ts = self.clock.now() if wall_ms is None else Timestamp(wall_ms, 0, self.replica)
        return self._do(self.cart.set(self.replica, sku, quantity, ts))

    def remove(self, sku: str) -> Cart:
        return self._do(self.cart.remove(self.replica, sku))

    def close(self) -> Cart:
        return self._do(self.cart.close(self.replica))

    def receive(self, state: Cart) -> None:
        self.cart.apply(wire(state))

    def state(self) -> Cart:
        return wire(self.cart)


def join(*deltas: Cart) -> Cart:
    out = Cart.new()
    for delta in deltas:
        out.apply(wire(delta))
    return out


async def catalog(store: SqlStore, **stock: int) -> dict[str, str]:
    """The SKUs (each with ``stock[sku]`` units in par-1, 100 unless given) → their product ids."""
    return {sku: await seed(store, sku, {"par-1": stock.get(sku, 100)}) for sku in SKUS}


async def push(
    store: SqlStore,
    *items: Cart | tuple[str, Cart],
    cart_id: str = CART,
    owner: str = "alice",
    rules: CartRules = RULES,
) -> PushResult:
    """Push deltas in one batch; an item is a delta (a fresh mutation id) or (mutation id, delta)."""
    pushes = [
        CartPush(*item) if isinstance(item, tuple) else CartPush(f"m-{next(_mutation_ids)}", item)
        for item in items
    ]
    return await store.push_cart(cart_id, owner, pushes, rules)


def statuses(result: PushResult) -> list[tuple[PushStatus, int, str | None]]:
    return [(o.status, o.version, o.code) for o in result.outcomes]


async def rows(store: SqlStore, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows read through the store's own SQL seam (read-only checks); bytes columns as bytes."""

    async def work(tx: Any) -> list[Any]:
        return list(await tx.fetch(sql, *args))

    return [
        {k: bytes(v) if isinstance(v, memoryview) else v for k, v in dict(row).items()}
        for row in await store.db.run(work, readonly=True)
    ]


async def footprint(store: SqlStore) -> dict[str, Any]:
    """Everything a cart write may change: carts, their mutation ids, replica owners, user event
    counters, idempotency keys, reservations, stock, and the outbox."""
    return {
        "carts": await rows(
            store,
            "SELECT id, owner, state, version, closed_at, reservation_id, updated_at"
            " FROM carts ORDER BY id",
        ),
        "mutations": await rows(
            store, "SELECT cart_id, mutation_id, version FROM cart_mutations ORDER BY cart_id, mutation_id"
        ),
        "replicas": await rows(store, "SELECT replica_id, owner FROM replicas ORDER BY replica_id"),
        "user_events": await rows(store, "SELECT sub, version FROM user_events ORDER BY sub"),
        "keys": await rows(store, "SELECT owner, key, body FROM idempotency_keys ORDER BY owner, key"),
        "reservations": await rows(store, "SELECT id, status FROM reservations ORDER BY id"),
        "stock": await rows(
            store, "SELECT product_id, warehouse_id, reserved, version FROM stock ORDER BY product_id"
        ),
        "outbox": await store.read_outbox(limit=100_000),
    }


async def replica_owners(store: SqlStore) -> dict[str, str]:
    return {r["replica_id"]: r["owner"] for r in await rows(store, "SELECT replica_id, owner FROM replicas")}


async def mutation_ids(store: SqlStore, cart_id: str = CART) -> dict[str, int]:
    found = await rows(store, "SELECT mutation_id, version FROM cart_mutations WHERE cart_id = $1", cart_id)
    return {r["mutation_id"]: r["version"] for r in found}


def payload(entry: OutboxEntry) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(entry.payload)
    return out


async def cart_entries(store: SqlStore, cart_id: str = CART) -> list[OutboxEntry]:
    return [e for e in await store.read_outbox(limit=100_000) if e.key == f"cart:{cart_id}"]


async def user_entries(store: SqlStore, sub: str = "alice") -> list[OutboxEntry]:
    return [e for e in await store.read_outbox(limit=100_000) if e.key == f"user:{sub}"]


async def reserved(store: SqlStore, product_id: str) -> int:
    return sum(level.reserved for level in await store.get_inventory(product_id))


async def document(store: SqlStore, cart_id: str = CART) -> CartDocument:
    found = await store.get_cart(cart_id)
    assert found is not None, f"no cart {cart_id}"
    return found


# -- merging and persisting ---------------------------------------------------------------------


async def test_a_pushed_delta_is_merged_and_get_cart_returns_the_merged_state(store):
    await catalog(store)
    phone = Device("phone-1")
    result = await push(store, phone.add("tea", 2), phone.add("milk"))
    assert statuses(result) == [(PushStatus.APPLIED, 1, None), (PushStatus.APPLIED, 2, None)]
    stored = await document(store)
    assert stored.cart == phone.cart == result.document.cart
    assert stored.cart.value() == {"tea": 2, "milk": 1}
    assert (stored.id, stored.owner, stored.version, stored.closed_at) == (CART, "alice", 2, None)
    assert stored.reservation_id is None
    assert await store.cart_owner(CART) == CartOwner("alice", store.region)


async def test_pushes_from_two_devices_are_joined_with_what_the_cart_already_holds(store):
    await catalog(store)
    phone, laptop = Device("phone-1"), Device("laptop-1")
    await push(store, phone.add("tea"))
    laptop.receive((await document(store)).cart)
    # Concurrent: the laptop sets tea to 5 (cancelling the add it saw), the phone adds one more.
    await push(store, laptop.set("tea", 5))
    await push(store, phone.add("tea"))
    stored = await document(store)
    assert stored.cart.value() == {"tea": 6}
    assert stored.cart == join(phone.cart, laptop.cart)


async def test_the_version_grows_by_one_per_accepted_change(store):
    await catalog(store)
    assert (await store.open_cart(CART, "alice")).version == 0
    phone = Device("phone-1")
    result = await push(store, phone.add("tea"), phone.set("tea", 4), phone.remove("tea"))
    assert [o.version for o in result.outcomes] == [1, 2, 3]
    assert result.document.version == 3
    result = await push(store, phone.add("milk"))
    assert statuses(result) == [(PushStatus.APPLIED, 4, None)]
    assert (await document(store)).version == 4


async def test_a_push_writes_the_causal_context_only_inside_the_state(store):
    # The state's bytes carry the context every reply renders; the JSON copy of it that pushes once
    # wrote to a column of its own (read by nothing, ~1% of a push) is gone (migration 15).
    await catalog(store)
    phone, laptop = Device("phone-1"), Device("laptop-1")
    await push(store, phone.add("tea", 2), laptop.add("milk"), phone.remove("tea"))
    [row] = await rows(store, "SELECT * FROM carts WHERE id = $1", CART)
    stored = codec.from_msgpack(row["state"])
    assert isinstance(stored, Cart)
    assert stored.context == join(phone.cart, laptop.cart).context
    assert stored == (await document(store)).cart
    assert "context" not in dict(row)


async def test_a_push_that_changes_nothing_new_is_acknowledged_without_a_new_version(store):
    await catalog(store)
    phone = Device("phone-1")
    added = phone.add("tea")
    await push(store, added, phone.add("milk"))
    before = await footprint(store)
    # The same delta again under a new mutation id, and the device's whole state: nothing new.
    result = await push(store, ("again", added), ("whole", phone.state()))
    assert statuses(result) == [(PushStatus.APPLIED, 2, None), (PushStatus.APPLIED, 2, None)]
    after = await footprint(store)
    assert after["carts"] == before["carts"]
    assert after["outbox"] == before["outbox"]
    assert await mutation_ids(store) == {**_ids(before), "again": 2, "whole": 2}
    # Acknowledged: a retry is a duplicate of the version it saw.
    assert statuses(await push(store, ("again", added))) == [(PushStatus.DUPLICATE, 2, None)]


def _ids(footprint_: dict[str, Any], cart_id: str = CART) -> dict[str, int]:
    return {r["mutation_id"]: r["version"] for r in footprint_["mutations"] if r["cart_id"] == cart_id}


async def test_opening_a_cart_creates_it_empty_for_its_user(store):
    await catalog(store)
    assert await store.get_cart(CART) is None
    opened = await store.open_cart(CART, "alice")
    assert (opened.owner, opened.version, opened.cart.value()) == ("alice", 0, {})
    assert opened.cart == Cart.new()
    assert await store.open_cart(CART, "alice") == opened


# -- the outbox ---------------------------------------------------------------------------------


async def test_each_change_appends_the_pushed_delta_not_the_state_to_the_owners_user_stream(store):
    await catalog(store)
    phone = Device("phone-1")
    first, second = phone.add("tea", 3), phone.set("tea", 1)
    third = phone.add("milk")
    await push(store, ("m-first", first))
    result = await push(store, ("m-second", second), ("m-third", third))
    entries = await cart_entries(store)
    assert [(e.stream, e.key, e.version) for e in entries] == [
        (user_stream(store.region, "alice"), f"cart:{CART}", v) for v in (1, 2, 3)
    ]
    for entry, mutation_id, delta in zip(
        entries, ["m-first", "m-second", "m-third"], [first, second, third], strict=True
    ):
        body = payload(entry)
        assert body["type"] == "cart.delta"
        assert (body["cart_id"], body["version"], body["mutation_id"]) == (CART, entry.version, mutation_id)
        carried = codec.from_dict(body["delta"])
        assert carried == delta
        assert codec.to_dict(carried) == codec.to_dict(delta)
    # The delta, never the state: the third entry holds the milk add alone.
    last = codec.from_dict(payload(entries[-1])["delta"])
    assert last != result.document.cart
    assert last.value() == {"milk": 1}
    # A subscriber applying the entries in version order holds the stored state.
    assert join(*(codec.from_dict(payload(e)["delta"]) for e in entries)) == (await document(store)).cart


async def test_a_delta_the_hub_mints_for_a_plain_client_is_what_the_outbox_carries(store):
    await catalog(store)
    minted: list[Cart] = []

    def add_tea(cart: Cart) -> Cart:
        delta = cart.add("web-1", "tea", 2)
        minted.append(delta)
        return delta

    result = await store.push_cart(CART, "alice", [CartPush("web-op", add_tea)], RULES)
    assert statuses(result) == [(PushStatus.APPLIED, 1, None)]
    (entry,) = await cart_entries(store)
    assert codec.from_dict(payload(entry)["delta"]) == minted[-1]
    assert (await document(store)).cart.value() == {"tea": 2}
    assert (await replica_owners(store))["web-1"] == "alice"


# -- mutation ids -------------------------------------------------------------------------------


async def test_a_mutation_id_retried_within_one_batch_applies_once(store):
    await catalog(store)
    phone = Device("phone-1")
    tea, milk = phone.add("tea"), phone.add("milk")
    result = await push(store, ("m1", tea), ("m1", tea), ("m2", milk), ("m1", tea))
    assert statuses(result) == [
        (PushStatus.APPLIED, 1, None),
        (PushStatus.DUPLICATE, 1, None),
        (PushStatus.APPLIED, 2, None),
        (PushStatus.DUPLICATE, 1, None),
    ]
    assert len(await cart_entries(store)) == 2
    assert await mutation_ids(store) == {"m1": 1, "m2": 2}


async def test_a_mutation_id_retried_later_is_answered_with_the_version_it_produced(store):
    await catalog(store)
    phone = Device("phone-1")
    tea = phone.add("tea")
    assert statuses(await push(store, ("m1", tea))) == [(PushStatus.APPLIED, 1, None)]
    await push(store, ("m2", phone.add("tea")))
    before = await footprint(store)
    # Even carrying another delta, a mutation id seen before is not applied again.
    result = await push(store, ("m1", tea), ("m1", phone.add("milk")))
    assert statuses(result) == [(PushStatus.DUPLICATE, 1, None), (PushStatus.DUPLICATE, 1, None)]
    assert result.document.version == 2
    assert await footprint(store) == before


async def test_purged_mutation_ids_are_merged_again_on_retry_and_change_nothing(store):
    await catalog(store)
    phone = Device("phone-1")
    tea = phone.add("tea")
    await push(store, ("old", tea))
    # 2 ms on both sides of the cutoff: now_ms() is whole milliseconds, the store's times microseconds
    # (a cutoff taken in the push's own millisecond fell before it)
    await asyncio.sleep(0.002)
    cutoff = now_ms() * 1000 + 1
    await asyncio.sleep(0.002)
    await push(store, ("new", phone.add("milk")))
    assert await store.purge_cart_mutations(cutoff) == 1
    assert set(await mutation_ids(store)) == {"new"}
    before = await document(store)
    # Retried after its id was forgotten: merged again — the join changes nothing, no new version.
    assert statuses(await push(store, ("old", tea))) == [(PushStatus.APPLIED, before.version, None)]
    after = await document(store)
    assert (after.cart, after.version) == (before.cart, before.version)
    assert len(await cart_entries(store)) == 2


async def test_a_remove_that_would_expose_a_line_past_the_bound_is_refused(store):
    await catalog(store)
    now = now_ms()
    big, small, adder = Device("dev-big"), Device("dev-small"), Device("dev-adder")
    await push(store, big.set("tea", 999, wall_ms=now))
    await push(store, small.set("tea", 1, wall_ms=now + 1000))  # concurrent: wins by clock, 999 kept
    await push(store, adder.add("tea", 500))  # 1 + 500
    assert (await document(store)).cart.value() == {"tea": 501}
    # A device that saw only the winning set removes the line: that set goes, the 999 and the 500 stay.
    remover = Device("dev-remover", small.state())
    before = await footprint(store)
    result = await push(store, remover.remove("tea"))
    assert [(o.status, o.code) for o in result.outcomes] == [(PushStatus.REFUSED, "quantity_out_of_range")]
    assert await footprint(store) == before
    # The same cancel of the small set with the big one seen too takes the line down: accepted.
    cleaner = Device("dev-cleaner", (await document(store)).cart)
    assert statuses(await push(store, cleaner.remove("tea")))[0][0] is PushStatus.APPLIED
    assert (await document(store)).cart.value() == {}


async def test_a_mutation_id_is_one_carts_own(store):
    await catalog(store)
    phone = Device("phone-1")
    await push(store, ("m1", phone.add("tea")))
    other = Device("phone-2")
    result = await push(store, ("m1", other.add("milk")), cart_id="cart-2")
    assert statuses(result) == [(PushStatus.APPLIED, 1, None)]


async def test_a_mutation_id_sent_to_two_nodes_at_once_applies_once(store, database_url):
    await catalog(store)
    other = open_store(database_url)
    await other.open()
    try:
        for round_ in range(5):
            phone = Device(f"phone-{round_}")
            delta = phone.add("tea")
            a, b = await asyncio.gather(
                push(store, ("retried", delta), cart_id=f"cart-{round_}"),
                push(other, ("retried", delta), cart_id=f"cart-{round_}"),
            )
            assert sorted(o.status for o in [*a.outcomes, *b.outcomes]) == sorted(
                [PushStatus.APPLIED, PushStatus.DUPLICATE]
            )
            assert [o.version for o in [*a.outcomes, *b.outcomes]] == [1, 1]
            assert len(await cart_entries(store, f"cart-{round_}")) == 1
            assert (await document(store, f"cart-{round_}")).version == 1
    finally:
        await other.close()


# -- refusals -----------------------------------------------------------------------------------


def _tablet(state: Cart) -> Device:
    """A device whose replica id was never used: a refusal must not bind it."""
    return Device("tablet-1", state)


def _foreign_bound(state: Cart) -> tuple[CartRules, Cart]:
    return RULES, Device("bob-phone", state).add("milk")


def _foreign_hub(state: Cart) -> tuple[CartRules, Cart]:
    return RULES, Device("~hub", state).add("milk")


def _foreign_tilde(state: Cart) -> tuple[CartRules, Cart]:
    return RULES, Device("~mine", state).add("milk")


def _unknown_sku(state: Cart) -> tuple[CartRules, Cart]:
    return RULES, _tablet(state).add("caviar")


def _clock_skew(state: Cart) -> tuple[CartRules, Cart]:
    ahead = now_ms() + RULES.max_drift_ms + 10 * 60_000
    return RULES, _tablet(state).set("milk", 2, wall_ms=ahead)


def _quantity_of_an_entry(state: Cart) -> tuple[CartRules, Cart]:
    return RULES, _tablet(state).add("milk", RULES.max_quantity + 1)


def _quantity_of_a_line(state: Cart) -> tuple[CartRules, Cart]:
    # Each entry is within the bound; the line they make with the cart's tea (1) is not.
    return RULES, _tablet(state).add("tea", RULES.max_quantity)


def _cart_too_large(state: Cart) -> tuple[CartRules, Cart]:
    tablet = _tablet(state)
    return CartRules(max_lines=2), join(tablet.add("milk"), tablet.add("rice"))


def _delta_too_large(state: Cart) -> tuple[CartRules, Cart]:
    tablet = _tablet(state)
    return CartRules(max_entries=2), join(tablet.add("milk"), tablet.add("rice"), tablet.add("salt"))


def _checkout_required(state: Cart) -> tuple[CartRules, Cart]:
    return RULES, _tablet(state).close()


REFUSALS = {
    "a replica bound to another user": (_foreign_bound, "foreign_replica"),
    "the hub's own replica": (_foreign_hub, "foreign_replica"),
    "a '~' replica id": (_foreign_tilde, "foreign_replica"),
    "a SKU not in the catalog": (_unknown_sku, "unknown_sku"),
    "a clock too far ahead": (_clock_skew, "clock_skew"),
    "an entry above the quantity bound": (_quantity_of_an_entry, "quantity_out_of_range"),
    "a merged line above the quantity bound": (_quantity_of_a_line, "quantity_out_of_range"),
    "one line too many": (_cart_too_large, "cart_too_large"),
    "too many entries in one delta": (_delta_too_large, "delta_too_large"),
    "a device's own checkout": (_checkout_required, "checkout_required"),
}


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
async def test_a_refused_delta_changes_nothing_and_the_rest_of_its_batch_goes_on(store, case):
    make_bad, code = REFUSALS[case]
    await catalog(store)
    bob = Device("bob-phone")
    await push(store, bob.add("tea"), cart_id="bobs-cart", owner="bob")
    phone = Device("phone-1")
    await push(store, phone.add("tea"))
    rules, bad = make_bad((await document(store)).cart)

    before = await footprint(store)
    alone = await push(store, ("bad", bad), rules=rules)
    assert statuses(alone) == [(PushStatus.REFUSED, 1, code)]
    assert alone.outcomes[0].message
    assert alone.document == await document(store)
    assert await footprint(store) == before

    good = [phone.add("tea"), phone.set("tea", 3)]
    result = await push(store, ("good-1", good[0]), ("bad", bad), ("good-2", good[1]), rules=rules)
    assert statuses(result) == [
        (PushStatus.APPLIED, 2, None),
        (PushStatus.REFUSED, 2, code),
        (PushStatus.APPLIED, 3, None),
    ]
    stored = await document(store)
    assert stored.cart == phone.cart
    assert stored.cart.value() == {"tea": 3}
    assert await mutation_ids(store) == {**_ids(before), "good-1": 2, "good-2": 3}
    assert await replica_owners(store) == {"bob-phone": "bob", "phone-1": "alice"}
    assert [payload(e)["mutation_id"] for e in await cart_entries(store)][-2:] == ["good-1", "good-2"]
    assert len(await store.read_outbox(limit=100_000)) == len(before["outbox"]) + 2
    # Refused, not recorded: the same mutation id is refused again, never answered as a duplicate.
    assert statuses(await push(store, ("bad", bad), rules=rules)) == [(PushStatus.REFUSED, 3, code)]


async def test_a_refused_push_into_a_new_cart_only_opens_it(store):
    await catalog(store)
    before = await footprint(store)
    result = await push(store, ("bad", Device("tablet-1").add("caviar")))
    assert statuses(result) == [(PushStatus.REFUSED, 0, "unknown_sku")]
    opened = await document(store)
    assert (opened.owner, opened.version, opened.cart) == ("alice", 0, Cart.new())
    assert result.document == opened
    assert {k: v for k, v in (await footprint(store)).items() if k != "carts"} == {
        k: v for k, v in before.items() if k != "carts"
    }


async def test_a_device_may_echo_the_checkout_it_received(store):
    await catalog(store)
    phone = Device("phone-1")
    await push(store, phone.add("tea"))
    await store.checkout_cart(CART, "alice", "key-1", "hash-1", 600)
    closed = await document(store)
    phone.receive(closed.cart)
    result = await push(store, ("echo", phone.state()))
    assert statuses(result) == [(PushStatus.APPLIED, closed.version, None)]
    assert await document(store) == closed


# -- replica ids --------------------------------------------------------------------------------


async def test_a_replica_id_is_bound_to_the_user_who_first_pushes_its_dots(store):
    await catalog(store)
    phone = Device("phone-1")
    await push(store, phone.add("tea"))
    assert await replica_owners(store) == {"phone-1": "alice"}
    # Alice's other carts take it; bob's do not, whatever cart it is.
    assert statuses(await push(store, Device("phone-1").add("tea"), cart_id="cart-2"))[0][0] == (
        PushStatus.APPLIED
    )
    impostor = Device("phone-1")
    result = await push(store, impostor.add("milk"), cart_id="bobs-cart", owner="bob")
    assert statuses(result) == [(PushStatus.REFUSED, 0, "foreign_replica")]
    assert await replica_owners(store) == {"phone-1": "alice"}


async def test_two_users_racing_to_bind_one_replica_id_exactly_one_wins(store, database_url):
    await catalog(store)
    other = open_store(database_url)
    await other.open()
    try:
        await store.open_cart("alices-cart", "alice")
        await store.open_cart("bobs-cart", "bob")
        for round_ in range(8):
            replica = f"shared-{round_}"
            alice, bob = await asyncio.gather(
                push(store, Device(replica).add("tea"), cart_id="alices-cart", owner="alice"),
                push(other, Device(replica).add("milk"), cart_id="bobs-cart", owner="bob"),
            )
            outcomes = {"alice": alice.outcomes[0], "bob": bob.outcomes[0]}
            winners = [user for user, o in outcomes.items() if o.status is PushStatus.APPLIED]
            assert len(winners) == 1, outcomes
            (loser,) = set(outcomes) - set(winners)
            assert outcomes[loser].code == "foreign_replica"
            assert (await replica_owners(store))[replica] == winners[0]
        versions = [(await document(store, cart_id)).version for cart_id in ("alices-cart", "bobs-cart")]
        assert sum(versions) == 8
    finally:
        await other.close()


async def test_a_refused_push_leaves_none_of_its_replicas_bound(store, database_url):
    """A delta of two new replicas, the second bound by another user while the first is being bound:
    the refusal takes the first binding back too."""
    await catalog(store)
    await store.open_cart(CART, "alice")
    both = join(Device("dev-a").add("tea"), Device("dev-b").add("milk"))
    if store.backend == "sqlite":
        # One writer at a time: bob's binding commits before alice's transaction starts, or after it.
        await push(store, Device("dev-b").add("tea"), cart_id="bobs-cart", owner="bob")
        result = await push(store, ("both", both))
    else:
        # Force the interleaving on PostgreSQL: bob's binding of dev-b is not committed when alice's
        # push checks its replicas (both unbound), and commits while it binds them.
        blocker = await asyncpg.connect(database_url)
        try:
            holding = blocker.transaction()
            await holding.start()
            await blocker.execute(
                "INSERT INTO replicas (replica_id, owner, created_at) VALUES ('dev-b', 'bob', 0)"
            )
            pushing = asyncio.create_task(push(store, ("both", both)))
            await wait_for_lock_waiters(database_url, 1)
            await holding.commit()
            result = await pushing
        finally:
            await blocker.close()
    assert statuses(result) == [(PushStatus.REFUSED, 0, "foreign_replica")]
    assert (await replica_owners(store)).get("dev-a") is None
    assert (await replica_owners(store))["dev-b"] == "bob"
    assert await mutation_ids(store) == {}
    assert (await document(store)).version == 0
    # dev-a is still free: alice binds it with a delta of its own.
    assert statuses(await push(store, Device("dev-a").add("tea")))[0][0] is PushStatus.APPLIED


# -- another user's cart ------------------------------------------------------------------------


async def test_another_users_cart_is_not_found_and_nothing_changes(store):
    await catalog(store)
    phone = Device("phone-1")
    await push(store, phone.add("tea"))
    before = await footprint(store)
    with pytest.raises(NotFound) as opened:
        await store.open_cart(CART, "bob")
    assert opened.value.details["resource"] == "cart"
    with pytest.raises(NotFound) as pushed:
        await push(store, Device("bob-phone").add("milk"), owner="bob")
    assert pushed.value.details["resource"] == "cart"
    with pytest.raises(NotFound) as checked_out:
        await store.checkout_cart(CART, "bob", "key-1", "hash-1", 600)
    assert checked_out.value.details["resource"] == "cart"
    assert await footprint(store) == before
    assert await store.cart_owner(CART) == CartOwner("alice", store.region)


# -- concurrency --------------------------------------------------------------------------------


def _edits(device: Device, own_sku: str, count: int) -> list[Cart]:
    """A device's offline session: adds to a shared line, and adds, sets and removes of its own."""
    out: list[Cart] = []
    for k in range(count):
        if k % 5 == 0:
            out.append(device.add("tea"))
        elif k % 5 == 1 or k % 5 == 2:
            out.append(device.add(own_sku, 1 + k % 3))
        elif k % 5 == 3:
            out.append(device.set(own_sku, k % 7))
        else:
            out.append(device.remove(own_sku) if k % 10 == 9 else device.add("tea"))
    return out


@pytest.mark.parametrize("nodes", [1, 2], ids=["one store", "two stores on one database"])
async def test_concurrent_pushes_into_one_cart_store_the_join_of_every_delta(store, database_url, nodes):
    await catalog(store)
    stores = [store]
    if nodes == 2:
        stores.append(open_store(database_url))
        await stores[1].open()
    try:
        devices = [Device(f"device-{i}") for i in range(4)]
        edits = {d.replica: _edits(d, SKUS[1 + i % 3], 25) for i, d in enumerate(devices)}
        jobs = [
            push(stores[n % nodes], (f"{replica}/{k}", delta))
            for n, (replica, deltas) in enumerate(edits.items())
            for k, delta in enumerate(deltas)
        ]
        results = await asyncio.gather(*jobs)
    finally:
        for extra in stores[1:]:
            await extra.close()

    outcomes = [o for r in results for o in r.outcomes]
    assert len(outcomes) == 100
    assert {o.status for o in outcomes} == {PushStatus.APPLIED}
    stored = await document(store)
    everything = join(*(delta for deltas in edits.values() for delta in deltas))
    assert stored.cart == everything
    assert stored.cart == join(*(d.cart for d in devices))
    # Versions 1..N without a gap, one outbox entry each, and the entries join to the state.
    entries = await cart_entries(store)
    assert [e.version for e in sorted(entries, key=lambda e: e.seq)] == list(range(1, stored.version + 1))
    assert stored.version == len({o.version for o in outcomes}) <= 100
    announced = {payload(e)["mutation_id"] for e in entries}
    assert sorted(o.version for o in outcomes if o.mutation_id in announced) == [e.version for e in entries]
    assert join(*(codec.from_dict(payload(e)["delta"]) for e in entries)) == stored.cart
    assert len(await mutation_ids(store)) == 100


@pytest.mark.parametrize("seed_", range(4))
async def test_device_edits_delivered_in_any_order_batching_and_retries_store_their_join(store, seed_):
    rng = random.Random(seed_)
    await catalog(store)
    devices = [Device(f"device-{i}") for i in range(3)]
    sent: list[tuple[str, Cart]] = []
    for step in range(40):
        device, roll = rng.choice(devices), rng.random()
        if roll < 0.4:
            delta = device.add(rng.choice(SKUS), rng.randint(1, 3))
        elif roll < 0.6:
            delta = device.set(rng.choice(SKUS), rng.randint(0, 5))
        elif roll < 0.75:
            delta = device.remove(rng.choice(SKUS))
        elif roll < 0.9:
            device.receive(rng.choice(devices).cart)  # two devices synced with each other
            continue
        else:
            delta = device.state()  # a whole state, stale or not
        sent.append((f"m-{step}", delta))
    # Delivered out of order, a third of them twice (retries), in batches of 1 to 4.
    deliveries = sent + rng.sample(sent, k=len(sent) // 3)
    rng.shuffle(deliveries)
    first: dict[str, int] = {}  # mutation id → the version its first delivery produced
    while deliveries:
        size = rng.randint(1, 4)
        batch, deliveries = deliveries[:size], deliveries[size:]
        for outcome in (await push(store, *batch)).outcomes:
            if outcome.mutation_id in first:
                assert (outcome.status, outcome.version) == (PushStatus.DUPLICATE, first[outcome.mutation_id])
            else:
                assert outcome.status is PushStatus.APPLIED
                first[outcome.mutation_id] = outcome.version
    stored = await document(store)
    assert stored.cart == join(*(delta for _, delta in sent)) == join(*(d.cart for d in devices))
    entries = await cart_entries(store)
    assert [e.version for e in entries] == list(range(1, stored.version + 1))
    assert join(*(codec.from_dict(payload(e)["delta"]) for e in entries)) == stored.cart
    assert await mutation_ids(store) == first


# -- checkout -----------------------------------------------------------------------------------


async def _filled_cart(store: SqlStore, **stock: int) -> tuple[dict[str, str], Device]:
    products = await catalog(store, **stock)
    phone = Device("phone-1")
    await push(store, phone.add("tea", 2), phone.add("milk", 3), phone.set("rice", 0))
    return products, phone


async def checkout(store: SqlStore, key: str = "key-1", request_hash: str = "hash-1") -> CheckoutResult:
    return await store.checkout_cart(CART, "alice", key, request_hash, 600)


async def test_checkout_reserves_every_line_and_closes_the_cart(store):
    products, _ = await _filled_cart(store)
    before = await document(store)
    result = await checkout(store)
    assert (result.outcome, result.replayed) == (CheckoutOutcome.RESERVED, False)
    reservation = await store.get_reservation(str(result.body["id"]))
    assert reservation is not None and reservation.owner == "alice"
    assert sorted((ln.product_id, ln.quantity) for ln in reservation.lines) == sorted(
        [(products["tea"], 2), (products["milk"], 3)]
    )
    assert {sku: await reserved(store, pid) for sku, pid in products.items()} == {
        "tea": 2,
        "milk": 3,
        "rice": 0,
        "salt": 0,
    }
    stored = await document(store)
    assert result.document == stored
    assert stored.cart.closed
    assert stored.reservation_id == reservation.id
    assert stored.closed_at is not None
    assert stored.version == before.version + 1
    assert stored.cart.value() == before.cart.value() == {"tea": 2, "milk": 3}
    assert stored.cart.rejected_edits() == []

    (closed,) = [e for e in await cart_entries(store) if payload(e)["type"] == "cart.closed"]
    assert (closed.stream, closed.version) == (user_stream(store.region, "alice"), stored.version)
    assert payload(closed)["reservation_id"] == reservation.id
    assert before.cart.merge(codec.from_dict(payload(closed)["delta"])) == stored.cart
    told = {payload(e)["type"]: payload(e) for e in await user_entries(store)}
    assert set(told) == {"reservation.created", "cart.status"}
    assert told["cart.status"]["status"] == "checked_out"
    assert told["cart.status"]["reservation_id"] == reservation.id
    assert told["reservation.created"]["reservation"]["id"] == reservation.id


async def test_a_carts_events_stay_on_its_own_regions_stream_whichever_node_writes_them(store, database_url):
    products, _ = await _filled_cart(store)
    assert await store.cart_owner(CART) == CartOwner("alice", store.region)
    elsewhere = open_store(database_url, region="far-away")
    await elsewhere.open()
    try:
        tablet = Device("tablet-far")
        await push(elsewhere, tablet.add("rice"))
        result = await checkout(elsewhere)
        assert result.outcome is CheckoutOutcome.RESERVED
        # An ordinary reservation through that node tells its owner on that node's region.
        await elsewhere.reserve("alice", "plain-1", "h", [ReservationLineRequest(products["salt"], 1)], 60)
    finally:
        await elsewhere.close()
    home = user_stream(store.region, "alice")
    kinds = {(payload(e)["type"], e.stream) for e in [*await cart_entries(store), *await user_entries(store)]}
    assert ("cart.delta", home) in kinds and ("cart.closed", home) in kinds
    assert ("cart.status", home) in kinds
    # The checkout's reservation is told on the cart's stream, in one order with its cart.closed...
    created = [e for e in await user_entries(store) if payload(e)["type"] == "reservation.created"]
    streams = {payload(e)["reservation"]["id"]: e.stream for e in created}
    assert streams[str(result.body["id"])] == home
    # ...and the plain one on the writing node's.
    assert sorted(streams.values()) == sorted([home, user_stream("far-away", "alice")])


async def test_checkout_with_the_same_idempotency_key_replays_without_reserving_again(store):
    products, _ = await _filled_cart(store)
    first = await checkout(store)
    before = await footprint(store)
    again = await checkout(store)
    assert (again.outcome, again.replayed, again.body) == (CheckoutOutcome.RESERVED, True, first.body)
    assert again.document == first.document
    assert await footprint(store) == before
    assert await reserved(store, products["tea"]) == 2
    assert len(await rows(store, "SELECT id FROM reservations")) == 1


async def test_checkout_with_a_reused_key_and_another_request_is_refused_and_changes_nothing(store):
    await _filled_cart(store)
    await checkout(store)
    before = await footprint(store)
    with pytest.raises(IdempotencyMismatch):
        await checkout(store, request_hash="hash-2")
    assert await footprint(store) == before


async def test_checkout_of_an_empty_cart_is_refused_and_the_cart_stays_open(store):
    await catalog(store)
    phone = Device("phone-1")
    await push(store, phone.add("tea"), phone.set("milk", 0), phone.remove("tea"))
    before = await document(store)
    result = await checkout(store)
    assert (result.outcome, result.replayed) == (CheckoutOutcome.EMPTY_CART, False)
    stored = await document(store)
    assert stored == before
    assert not stored.cart.closed and stored.reservation_id is None
    assert await rows(store, "SELECT id FROM reservations") == []
    # Still open: it takes edits, and checks out once it holds a line.
    await push(store, phone.add("tea"))
    assert (await checkout(store, key="key-2")).outcome is CheckoutOutcome.RESERVED


async def test_checkout_without_enough_stock_reserves_nothing_and_the_cart_stays_open(store):
    products, phone = await _filled_cart(store, milk=2)
    before = await footprint(store)
    result = await checkout(store)
    assert (result.outcome, result.replayed) == (CheckoutOutcome.INSUFFICIENT_STOCK, False)
    assert result.body["code"] == "insufficient_stock"
    after = await footprint(store)
    # Only the idempotency key's outcome is new: the tea line, which had stock, was not kept either.
    assert {k: v for k, v in after.items() if k != "keys"} == {k: v for k, v in before.items() if k != "keys"}
    assert all([await reserved(store, pid) == 0 for pid in products.values()])
    stored = await document(store)
    assert not stored.cart.closed and stored.reservation_id is None
    # The same key replays the refusal; with less in the cart, a new key reserves.
    assert (await checkout(store)).replayed
    await push(store, phone.set("milk", 2))
    assert (await checkout(store, key="key-2")).outcome is CheckoutOutcome.RESERVED
    assert await reserved(store, products["milk"]) == 2


async def test_an_offline_edit_pushed_after_the_checkout_is_kept_but_rejected(store):
    await _filled_cart(store)
    laptop = Device("laptop-1", (await document(store)).cart)
    await checkout(store)
    closed = await document(store)
    # Made on the state from before the checkout, pushed once the cart is closed.
    late = [laptop.add("tea", 5), laptop.remove("milk")]
    result = await push(store, *late)
    assert [o.status for o in result.outcomes] == [PushStatus.APPLIED, PushStatus.APPLIED]
    stored = await document(store)
    assert stored.cart == closed.cart.merge(join(*late))
    assert stored.cart.value() == closed.cart.value() == {"tea": 2, "milk": 3}
    rejected = {(e.sku, e.kind, e.quantity) for e in stored.cart.rejected_edits()}
    assert ("tea", "add", 5) in rejected
    assert ("milk", "cancel", 3) in rejected
    assert stored.reservation_id == closed.reservation_id
    # A second checkout does not reserve the rejected edits.
    again = await checkout(store, key="key-2")
    assert again.body == {"reservation_id": closed.reservation_id, "already_closed": True}
    assert len(await rows(store, "SELECT id FROM reservations")) == 1


# -- removes ------------------------------------------------------------------------------------


async def test_a_stale_device_pushing_its_old_state_does_not_bring_a_removed_line_back(store):
    await catalog(store)
    phone = Device("phone-1")
    await push(store, phone.add("tea", 2), phone.add("milk"))
    laptop = Device("laptop-1", (await document(store)).cart)
    await push(store, laptop.remove("tea"))
    removed = await document(store)
    assert removed.cart.value() == {"milk": 1}
    # The phone never heard of the remove: its whole state, and its old delta again, change nothing.
    result = await push(store, phone.state(), phone.add("milk"))
    stored = await document(store)
    assert stored.cart.value() == {"milk": 2}
    assert "tea" not in stored.cart.lines()
    assert [o.version for o in result.outcomes] == [removed.version, removed.version + 1]


async def test_the_cart_rules_hold_for_edits_pushed_after_the_checkout_too(store):
    await _filled_cart(store)
    open_state = (await document(store)).cart
    await checkout(store)
    closed = await document(store)
    rules = CartRules(max_lines=3)
    # The live cart (tea 2, milk 3, rice 0) keeps the bounds, though the edits are rejected anyway.
    too_many = await push(
        store, Device("laptop-1", open_state).add("tea", RULES.max_quantity - 1), rules=rules
    )
    assert statuses(too_many) == [(PushStatus.REFUSED, closed.version, "quantity_out_of_range")]
    too_large = await push(store, Device("laptop-1", open_state).add("salt"), rules=rules)
    assert statuses(too_large) == [(PushStatus.REFUSED, closed.version, "cart_too_large")]
    assert await document(store) == closed
    kept = await push(store, Device("laptop-1", open_state).add("tea", 3), rules=rules)
    assert statuses(kept) == [(PushStatus.APPLIED, closed.version + 1, None)]


async def test_a_line_set_to_zero_is_a_line_of_the_cart(store):
    await catalog(store)
    phone = Device("phone-1")
    rules = CartRules(max_lines=2)
    await push(store, phone.add("tea"), phone.set("milk", 0), rules=rules)
    assert set((await document(store)).cart.lines()) == {"tea", "milk"}
    result = await push(store, phone.set("rice", 0), rules=rules)
    assert statuses(result) == [(PushStatus.REFUSED, 2, "cart_too_large")]
    # Removed, it is no line: room for another.
    result = await push(store, phone.remove("milk"), phone.add("rice"), rules=rules)
    assert [o.status for o in result.outcomes] == [PushStatus.APPLIED, PushStatus.APPLIED]
    assert (await document(store)).cart.value() == {"tea": 1, "rice": 1}


async def test_a_cart_past_a_bound_under_older_rules_may_still_be_edited_down(store):
    await catalog(store)
    phone = Device("phone-1")
    await push(store, phone.add("tea", 10), phone.add("milk", 10), phone.add("rice"))
    rules = CartRules(max_lines=2, max_quantity=5)
    result = await push(
        store,
        ("fewer lines", phone.remove("rice")),
        ("less tea", phone.set("tea", 4)),
        ("more milk", phone.add("milk")),
        ("another line", phone.add("salt")),
        rules=rules,
    )
    assert statuses(result) == [
        (PushStatus.APPLIED, 4, None),
        (PushStatus.APPLIED, 5, None),
        (PushStatus.REFUSED, 5, "quantity_out_of_range"),
        (PushStatus.REFUSED, 5, "cart_too_large"),
    ]
    assert (await document(store)).cart.value() == {"tea": 4, "milk": 10}


async def test_checkout_of_a_line_whose_product_is_gone_reserves_nothing(store):
    products, _ = await _filled_cart(store)
    await store.delete_product(products["milk"])
    result = await checkout(store)
    assert result.outcome is CheckoutOutcome.PRODUCT_NOT_FOUND
    assert result.body["skus"] == ["milk"]
    assert not (await document(store)).cart.closed
    assert await reserved(store, products["tea"]) == 0
    assert await rows(store, "SELECT id FROM reservations") == []


async def test_a_cart_checked_out_on_two_nodes_at_once_is_reserved_once(store, database_url):
    products, _ = await _filled_cart(store)
    other = open_store(database_url)
    await other.open()
    try:
        same_key = await asyncio.gather(
            store.checkout_cart(CART, "alice", "key-1", "hash-1", 600),
            other.checkout_cart(CART, "alice", "key-1", "hash-1", 600),
        )
        other_key = await other.checkout_cart(CART, "alice", "key-2", "hash-2", 600)
    finally:
        await other.close()
    assert sorted(r.replayed for r in same_key) == [False, True]
    assert same_key[0].body == same_key[1].body
    stored = await document(store)
    assert other_key.body == {"reservation_id": stored.reservation_id, "already_closed": True}
    assert len(await rows(store, "SELECT id FROM reservations")) == 1
    assert (await reserved(store, products["tea"]), await reserved(store, products["milk"])) == (2, 3)
    assert len([e for e in await cart_entries(store) if payload(e)["type"] == "cart.closed"]) == 1


async def test_a_checkout_racing_pushes_reserves_exactly_what_it_closed(store, database_url):
    products = await catalog(store)
    other = open_store(database_url)
    await other.open()
    try:
        devices = [Device(f"device-{i}") for i in range(3)]
        edits = [d.add(SKUS[(i + k) % 2], 1) for k in range(8) for i, d in enumerate(devices)]
        await push(store, *edits[:3])
        jobs: list[Any] = [push(other if k % 2 else store, delta) for k, delta in enumerate(edits[3:])]
        jobs.insert(len(jobs) // 2, other.checkout_cart(CART, "alice", "key-1", "hash-1", 600))
        done = await asyncio.gather(*jobs)
    finally:
        await other.close()
    (result,) = [r for r in done if isinstance(r, CheckoutResult)]
    assert result.outcome is CheckoutOutcome.RESERVED
    stored = await document(store)
    frozen = stored.cart.value()
    assert {sku: await reserved(store, products[sku]) for sku in ("tea", "milk")} == {
        sku: frozen.get(sku, 0) for sku in ("tea", "milk")
    }
    # Every edit is kept: the ones the checkout had not seen are its rejected edits.
    assert stored.cart == join(*edits).merge(stored.cart)
    late = sum(e.quantity for e in stored.cart.rejected_edits() if e.kind == "add")
    assert sum(frozen.values()) + late == len(edits)
    entries = await cart_entries(store)
    assert [e.version for e in entries] == list(range(1, stored.version + 1))
