"""The Python client SDK's offline side, without a hub: what a device writes while offline is in its
SQLite file when the edit returns — the replica's state and every delta not yet acknowledged, under
mutation ids that are unique and stable — so a process that dies at any point comes back with exactly
the edits it made (tests/test_client_python.py kills real processes against real hubs)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from synchub_client import CartDocument, Client, OfflineStore, ReviewDocument

from crdt import codec
from crdt.cart import Cart
from crdt.review import Review

SKUS = ["TEA", "JAM", "OAT"]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(SKUS), st.integers(1, 5)),
        st.tuples(st.just("set"), st.sampled_from(SKUS), st.integers(0, 9)),
        st.tuples(st.just("remove"), st.sampled_from(SKUS), st.just(0)),
    ),
    max_size=25,
)


def apply(cart: CartDocument, op: tuple[str, str, int]) -> None:
    kind, sku, n = op
    if kind == "add":
        cart.add(sku, n)
    elif kind == "set":
        cart.set(sku, n)
    else:
        cart.remove(sku)


@settings(max_examples=40, deadline=None)
@given(first=ops, second=ops)
def test_a_device_restarted_at_any_point_has_every_edit_it_made_queued_once(
    tmp_path_factory: object, first: list[tuple[str, str, int]], second: list[tuple[str, str, int]]
) -> None:
    path = Path(tmp_path_factory.mktemp("device")) / "device.sqlite3"  # type: ignore[attr-defined]
    client = Client("http://127.0.0.1:9")  # never started: offline
    store = OfflineStore(path)
    cart = CartDocument(client, store, "5a0f9abd-0000-4000-8000-000000000001")
    for op in first:
        apply(cart, op)
    # "Killed": the first process never closes its store; a second one opens the same file.
    again = CartDocument(client, OfflineStore(path), cart.doc_id)
    assert again.state == cart.state and again.replica == cart.replica
    for op in second:
        apply(again, op)
    pending = again.store.pending("cart", again.doc_id)
    ids = [p.mutation_id for p in pending]
    assert len(ids) == len(first) + len(second) == len(set(ids))
    assert all(i.startswith(again.replica + "-m") for i in ids)
    rebuilt = Cart.new()
    for row in pending:
        rebuilt.apply(codec.from_msgpack(row.delta))
    assert rebuilt == again.state  # the queue holds exactly the edits, nothing else
    assert [p.op["op"] for p in pending] == [op[0] for op in first + second]
    store.close()


def test_replica_ids_are_never_reused_across_devices_or_rebuilds(tmp_path: Path) -> None:
    ids = set()
    for n in range(3):
        store = OfflineStore(tmp_path / f"d{n}.sqlite3")
        ids |= {store.new_replica() for _ in range(50)}
        store.close()
    assert len(ids) == 150


def test_an_edit_is_committed_before_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "device.sqlite3"
    cart = CartDocument(Client("http://127.0.0.1:9"), OfflineStore(path), "c1")
    cart.add("TEA", 2)
    # Another connection (another process would see the same) reads it at once: committed, not buffered.
    rows = sqlite3.connect(path).execute("SELECT mutation_id, op FROM outbox").fetchall()
    assert rows == [(f"{cart.replica}-m1", '{"op": "add", "sku": "TEA", "quantity": 2}')]
    review = ReviewDocument(Client("http://127.0.0.1:9"), OfflineStore(path), "r1")
    review.create("p1", "alice")
    review.set_rating(4)
    stored = OfflineStore(path).load("review", "r1")
    assert stored is not None and codec.from_msgpack(stored.state) == review.state
    assert isinstance(review.state, Review) and review.state.value() is not None
