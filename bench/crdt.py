"""The cart CRDT's merge path and wire size, beside pycrdt (Yrs, the Rust port of Yjs) doing the
equivalent map edits, in the same process and run.

For a cart of 10, 100 and 1,000 lines (one SKU per line, built by one device):

* **apply µs**: one-line deltas applied to another replica's cart, decode included
  (``cart.apply(codec.from_msgpack(payload))``), each edit on a random line; best of ``--repeat``
  runs of ``--deltas`` deltas. pycrdt: a ``Y.Map`` with as many keys, one ``map[key] = value`` per
  update (``get_update(state_vector)``), applied with ``apply_update`` to another doc.
* **delta bytes**: the encoded one-line delta (MessagePack through :mod:`crdt.codec`, type tag and
  version included) — median over the run; pycrdt: the update's length.
* **state bytes/line**: the whole encoded state divided by the number of lines (keys).

Edits: ``add 1`` ("add to cart") and ``set qty`` by the device that built the cart (like pycrdt's, whose
one doc writes everything); ``set qty, other device`` also cancels the first device's dot, so its delta
names two replicas. pycrdt is a bench-only dependency (``pip install pycrdt``); without it the bench
says so and prints our rows alone.

Run: ``python -m bench crdt [--lines 10,100,1000] [--deltas 2000] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crdt import codec
from crdt.cart import Cart
from crdt.dots import new_replica_id
from crdt.hlc import HybridClock

WALL_MS = 1_763_900_000_000  # a 2025 wall clock: timestamps take their real size on the wire


@dataclass
class Row:
    impl: str
    lines: int
    edit: str
    fresh_us: float  # one edit applied to freshly built replicas, decode included
    fresh_bytes: int  # that edit's encoded size
    state_bytes_per_line: float  # the freshly built state
    stream_us: float  # each of a stream of edits on random lines
    stream_bytes: float  # median over the stream
    stream_state_bytes_per_line: float  # after the stream

    def fresh_row(self) -> str:
        head = f"| {self.impl} | {self.lines:,} | {self.edit} |"
        rate, size = 1e6 / self.fresh_us, self.state_bytes_per_line
        return f"{head} {self.fresh_us:.1f} | {rate:,.0f} | {self.fresh_bytes} | {size:.1f} |"

    def stream_row(self) -> str:
        head = f"| {self.impl} | {self.lines:,} | {self.edit} |"
        rate, size = 1e6 / self.stream_us, self.stream_state_bytes_per_line
        return f"{head} {self.stream_us:.1f} | {rate:,.0f} | {self.stream_bytes:.0f} | {size:.1f} |"


def _sku(i: int) -> str:
    return f"sku-{i:05d}"


def _best_of(repeat: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeat))


def _timed(apply_all: Callable[[], None]) -> float:
    """Time ``apply_all`` with the replicas built beforehand frozen out of the garbage collector: a
    full collection over hundreds of fresh replicas would otherwise land in the timing."""
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        apply_all()
        return time.perf_counter() - start
    finally:
        gc.unfreeze()


def _cart_rows(lines: int, deltas: int, fresh: int, repeat: int, seed: int) -> list[Row]:
    builder, other = new_replica_id(), new_replica_id()
    ticks = iter(range(WALL_MS, WALL_MS + 10**9))
    clocks = {
        builder: HybridClock(builder, lambda: next(ticks)),
        other: HybridClock(other, lambda: next(ticks)),
    }
    base = Cart.new()
    for i in range(lines):
        base.apply(base.add(builder, _sku(i)))
    base_state = codec.to_msgpack(base)
    rows = []
    edits: list[tuple[str, Callable[[Cart, str, random.Random], Cart]]] = [
        ("add 1", lambda cart, sku, rng: cart.add(builder, sku)),
        ("set qty", lambda cart, sku, rng: cart.set(builder, sku, rng.randint(0, 9), clocks[builder].now())),
        (
            "set qty, other device",
            lambda cart, sku, rng: cart.set(other, sku, rng.randint(0, 9), clocks[other].now()),
        ),
    ]
    for name, edit in edits:
        rng = random.Random(seed)
        # One edit, applied to `fresh` replicas of the freshly built cart.
        first = codec.to_msgpack(edit(codec.from_msgpack(base_state), _sku(lines // 2), rng))

        def run_fresh(first: bytes = first) -> float:
            targets = [codec.from_msgpack(base_state) for _ in range(fresh)]

            def apply_all() -> None:
                for target in targets:
                    target.apply(codec.from_msgpack(first))

            return _timed(apply_all)

        fresh_us = _best_of(repeat, run_fresh) / fresh * 1e6
        # A stream of edits on random lines, applied in order to one replica.
        source = codec.from_msgpack(base_state)
        payloads = []
        for _ in range(deltas):
            delta = edit(source, _sku(rng.randrange(lines)), rng)
            source.apply(delta)
            payloads.append(codec.to_msgpack(delta))

        def run_stream(payloads: list[bytes] = payloads, source: Cart = source) -> float:
            target = codec.from_msgpack(base_state)

            def apply_all() -> None:
                for payload in payloads:
                    target.apply(codec.from_msgpack(payload))

            elapsed = _timed(apply_all)
            assert target == source, "the replica that applied the deltas differs from their source"
            return elapsed

        stream_us = _best_of(repeat, run_stream) / deltas * 1e6
        rows.append(
            Row(
                "synchub cart",
                lines,
                name,
                fresh_us,
                len(first),
                len(base_state) / lines,
                stream_us,
                statistics.median(len(p) for p in payloads),
                len(codec.to_msgpack(source)) / lines,
            )
        )
    return rows


def _pycrdt_rows(lines: int, deltas: int, fresh: int, repeat: int, seed: int) -> list[Row]:
    """Two rows: updates since the peer's state vector (``get_update(state)``, as y-protocols' sync
    step 2 sends them), and each transaction's own update (``Doc.observe``, what a provider broadcasts
    live). They are the same bytes for a first edit; over a stream the former also carries the doc's
    whole delete set (Yjs state vectors do not cover deletions), the latter only the edit's."""
    from pycrdt import Doc, Map

    doc: Any = Doc()
    cart: Any = doc.get("cart", type=Map)
    for i in range(lines):
        cart[_sku(i)] = 1
    base_update = doc.get_update()
    base_size = len(base_update) / lines
    rng = random.Random(seed)
    by_transaction: list[bytes] = []
    subscription = doc.observe(lambda event: by_transaction.append(event.update))
    since_state: list[bytes] = []
    for k in range(deltas):
        before = doc.get_state()
        cart[_sku(lines // 2 if k == 0 else rng.randrange(lines))] = rng.randint(0, 9)
        since_state.append(doc.get_update(before))
    doc.unobserve(subscription)
    first = since_state[0]
    assert by_transaction[0] == first or len(by_transaction[0]) == len(first)

    def replica() -> Any:
        target = Doc()
        target.apply_update(base_update)
        return target

    def run_fresh() -> float:
        targets = [replica() for _ in range(fresh)]

        def apply_all() -> None:
            for target in targets:
                target.apply_update(first)

        return _timed(apply_all)

    fresh_us = _best_of(repeat, run_fresh) / fresh * 1e6
    rows = []
    for name, updates in (("update since state vector", since_state), ("transaction update", by_transaction)):

        def run_stream(updates: list[bytes] = updates) -> float:
            target = replica()

            def apply_all() -> None:
                for update in updates:
                    target.apply_update(update)

            elapsed = _timed(apply_all)
            assert target.get("cart", type=Map).to_py() == cart.to_py()
            return elapsed

        rows.append(
            Row(
                "pycrdt Y.Map",
                lines,
                f"map[key] = value, {name}",
                fresh_us,
                len(first),
                base_size,
                _best_of(repeat, run_stream) / deltas * 1e6,
                statistics.median(len(u) for u in updates),
                len(doc.get_update()) / lines,
            )
        )
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench crdt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", default="10,100,1000", help="cart sizes, comma-separated")
    parser.add_argument("--deltas", type=int, default=2_000, help="edits in the stream")
    parser.add_argument("--fresh", type=int, default=300, help="fresh replicas the single edit is applied to")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement; the best counts")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.lines.split(",")]

    try:
        import pycrdt
    except ImportError:
        pycrdt = None
        print("pycrdt is not importable (pip install pycrdt): printing the cart's figures alone.\n")

    rows: list[Row] = []
    for lines in sizes:
        rows += _cart_rows(lines, args.deltas, args.fresh, args.repeat, args.seed)
        if pycrdt is not None:
            rows += _pycrdt_rows(lines, args.deltas, args.fresh, args.repeat, args.seed)

    version = getattr(pycrdt, "__version__", "") if pycrdt is not None else ""
    print(f"One edit on a freshly built cart, applied to {args.fresh} replicas, decode included;")
    print(f"best of {args.repeat} runs (pycrdt {version}):\n")
    print("| impl | lines | edit | apply µs | applies/s | delta bytes | state bytes/line |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if "transaction update" not in row.edit:  # the fresh figures of the two pycrdt rows are one
            print(row.fresh_row().replace(", update since state vector", ""))
    print(f"\nA stream of {args.deltas:,} edits on random lines, applied in order to one replica:\n")
    print("| impl | lines | edit | apply µs | applies/s | median delta bytes | state bytes/line after |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.stream_row())
    if pycrdt is not None:
        print("\nAgainst the targets (apply time < pycrdt's, delta ≤ 1.5× its size; one edit, fresh cart):\n")
        for lines in sizes:
            theirs = next(r for r in rows if r.impl.startswith("pycrdt") and r.lines == lines)  # (same fresh)
            for row in rows:
                if row.impl.startswith("synchub") and row.lines == lines:
                    time_ratio, size_ratio = (
                        row.fresh_us / theirs.fresh_us,
                        row.fresh_bytes / theirs.fresh_bytes,
                    )
                    verdict = "met" if time_ratio < 1 and size_ratio <= 1.5 else "NOT met"
                    print(
                        f"- {lines:,} lines, {row.edit}: {time_ratio:.2f}× pycrdt's apply time, "
                        f"{size_ratio:.2f}× its delta size — {verdict}"
                    )
    return 0
