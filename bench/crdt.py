"""The cart CRDT's merge path and wire size, beside pycrdt (Yrs, the Rust port of Yjs) doing the
equivalent map edits, in the same process and run.

A cart of 10, 100 and 1,000 lines (one SKU per line, built by one device) and a ``Y.Map`` with as
many keys (built by one doc), then one-line edits:

* ours: ``add 1`` ("add to cart") and ``set qty`` by the device that built the cart — like pycrdt's,
  whose one doc writes everything — and ``set qty, other device``, whose delta also cancels the
  first device's dot and so names two replicas;
* pycrdt: ``map[key] = value``.

Two measurements, decode included (``cart.apply(codec.from_msgpack(payload))`` against
``doc.apply_update(update)``):

* **fresh** — one edit of the freshly built document, applied to ``--fresh`` replicas of it: the
  first edit's time and encoded size (for pycrdt, its update since the peer's state vector);
* **stream** — ``--deltas`` edits on random lines, applied in order to one replica. pycrdt twice:
  updates since the peer's state vector (``get_update(state)``, as y-protocols' sync step 2 sends
  them), which also carry the doc's whole delete set (Yjs state vectors do not cover deletions), and
  each transaction's own update (``Doc.observe``, what a provider broadcasts live).

Sizes: our deltas through :mod:`crdt.codec` as MessagePack (type tag and version included); states
per line are the whole encoded state divided by the number of lines. Timings are the best of
``--repeat`` runs, ours and pycrdt's interleaved so that a busy machine slows both alike, with the
replicas built beforehand frozen out of the garbage collector. pycrdt is a bench-only dependency
(``pip install pycrdt``); without it the bench says so and prints our rows alone.

Run: ``python -m bench crdt [--lines 10,100,1000] [--deltas 2000] [--fresh 300] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.machinery
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crdt import _cart_state, codec
from crdt.cart import Cart
from crdt.dots import new_replica_id
from crdt.hlc import HybridClock

WALL_MS = 1_763_900_000_000  # a 2025 wall clock: timestamps take their real size on the wire


@dataclass
class Case:
    impl: str
    lines: int
    edit: str
    fresh: Callable[[], float] | None  # seconds for all the fresh applies
    stream: Callable[[], float]  # seconds for the whole stream
    fresh_bytes: int
    state_bytes_per_line: float
    stream_bytes: float  # median over the stream
    stream_state_bytes_per_line: float  # after the stream
    fresh_us: float = math.inf
    stream_us: float = math.inf

    def run(self, fresh: int, deltas: int) -> None:
        if self.fresh is not None:
            self.fresh_us = min(self.fresh_us, self.fresh() / fresh * 1e6)
        self.stream_us = min(self.stream_us, self.stream() / deltas * 1e6)

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


def _timed(apply_all: Callable[[], None]) -> float:
    """Time ``apply_all`` with what was built beforehand frozen out of the garbage collector: a full
    collection over hundreds of fresh replicas would otherwise land in the timing."""
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        apply_all()
        return time.perf_counter() - start
    finally:
        gc.unfreeze()


def _cart_cases(lines: int, deltas: int, fresh: int, seed: int) -> list[Case]:
    builder, other = new_replica_id(), new_replica_id()
    ticks = iter(range(WALL_MS, WALL_MS + 10**9))
    clocks = {replica: HybridClock(replica, lambda: next(ticks)) for replica in (builder, other)}
    base = Cart.new()
    for i in range(lines):
        base.apply(base.add(builder, _sku(i)))
    base_state = codec.to_msgpack(base)
    edits: list[tuple[str, Callable[[Cart, str, random.Random], Cart]]] = [
        ("add 1", lambda cart, sku, rng: cart.add(builder, sku)),
        ("set qty", lambda cart, sku, rng: cart.set(builder, sku, rng.randint(0, 9), clocks[builder].now())),
        (
            "set qty, other device",
            lambda cart, sku, rng: cart.set(other, sku, rng.randint(0, 9), clocks[other].now()),
        ),
    ]
    cases = []
    for name, edit in edits:
        rng = random.Random(seed)
        first = codec.to_msgpack(edit(codec.from_msgpack(base_state), _sku(lines // 2), rng))
        source = codec.from_msgpack(base_state)
        payloads = []
        for _ in range(deltas):
            delta = edit(source, _sku(rng.randrange(lines)), rng)
            source.apply(delta)
            payloads.append(codec.to_msgpack(delta))

        def run_fresh(first: bytes = first) -> float:
            targets = [codec.from_msgpack(base_state) for _ in range(fresh)]

            def apply_all() -> None:
                for target in targets:
                    target.apply(codec.from_msgpack(first))

            return _timed(apply_all)

        def run_stream(payloads: list[bytes] = payloads, source: Cart = source) -> float:
            target = codec.from_msgpack(base_state)

            def apply_all() -> None:
                for payload in payloads:
                    target.apply(codec.from_msgpack(payload))

            elapsed = _timed(apply_all)
            assert target == source, "the replica that applied the deltas differs from their source"
            return elapsed

        cases.append(
            Case(
                "synchub cart",
                lines,
                name,
                run_fresh,
                run_stream,
                len(first),
                len(base_state) / lines,
                statistics.median(len(p) for p in payloads),
                len(codec.to_msgpack(source)) / lines,
            )
        )
    return cases


def _pycrdt_cases(lines: int, deltas: int, fresh: int, seed: int) -> list[Case]:
    from pycrdt import Doc, Map

    doc: Any = Doc()
    cart: Any = doc.get("cart", type=Map)
    for i in range(lines):
        cart[_sku(i)] = 1
    base_update = doc.get_update()
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
    final = cart.to_py()

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

    cases = []
    for name, updates in (("update since state vector", since_state), ("transaction update", by_transaction)):

        def run_stream(updates: list[bytes] = updates) -> float:
            target = replica()

            def apply_all() -> None:
                for update in updates:
                    target.apply_update(update)

            elapsed = _timed(apply_all)
            assert target.get("cart", type=Map).to_py() == final
            return elapsed

        cases.append(
            Case(
                "pycrdt Y.Map",
                lines,
                f"map[key] = value, {name}",
                run_fresh if name == "update since state vector" else None,  # the same first edit
                run_stream,
                len(first),
                len(base_update) / lines,
                statistics.median(len(u) for u in updates),
                len(doc.get_update()) / lines,
            )
        )
    return cases


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench crdt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", default="10,100,1000", help="cart sizes, comma-separated")
    parser.add_argument("--deltas", type=int, default=2_000, help="edits in the stream")
    parser.add_argument("--fresh", type=int, default=300, help="fresh replicas the first edit is applied to")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement; the best counts")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.lines.split(",")]

    try:
        import pycrdt
    except ImportError:
        pycrdt = None
        print("pycrdt is not importable (pip install pycrdt): printing the cart's figures alone.\n")

    cases: list[Case] = []
    for lines in sizes:
        group = _cart_cases(lines, args.deltas, args.fresh, args.seed)
        if pycrdt is not None:
            group += _pycrdt_cases(lines, args.deltas, args.fresh, args.seed)
        for _ in range(args.repeat):
            for case in group:
                case.run(args.fresh, args.deltas)
        cases += group

    peer = f", pycrdt {getattr(pycrdt, '__version__', '?')}" if pycrdt is not None else ""
    compiled = (_cart_state.__file__ or "").endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    peer += ", crdt build: " + ("compiled (mypyc)" if compiled else "pure Python")
    print(f"One edit of a freshly built cart, applied to {args.fresh} replicas of it, decode included;")
    print(f"best of {args.repeat} runs{peer}:\n")
    print("| impl | lines | edit | apply µs | applies/s | delta bytes | state bytes/line |")
    print("|---|---|---|---|---|---|---|")
    for case in cases:
        if case.fresh is not None:
            print(case.fresh_row().replace(", update since state vector", ""))
    print(f"\nA stream of {args.deltas:,} edits on random lines, applied in order to one replica:\n")
    print("| impl | lines | edit | apply µs | applies/s | median delta bytes | state bytes/line after |")
    print("|---|---|---|---|---|---|---|")
    for case in cases:
        print(case.stream_row())
    if pycrdt is not None:
        print("\nAgainst the targets — apply faster than pycrdt, delta at most 1.5× its size — one edit:\n")
        for lines in sizes:
            theirs = next(c for c in cases if c.impl.startswith("pycrdt") and c.lines == lines)
            for case in cases:
                if case.impl.startswith("synchub") and case.lines == lines:
                    time_ratio, size_ratio = (
                        case.fresh_us / theirs.fresh_us,
                        case.fresh_bytes / theirs.fresh_bytes,
                    )
                    print(
                        f"- {lines:,} lines, {case.edit}: {time_ratio:.2f}× pycrdt's apply time "
                        f"({'met' if time_ratio < 1 else 'not met'}), {size_ratio:.2f}× its delta size "
                        f"({'met' if size_ratio <= 1.5 else 'not met'})"
                    )
    return 0


if __name__ == "__main__":  # python -m bench.crdt is python -m bench crdt
    import sys

    sys.exit(main(sys.argv[1:]))
