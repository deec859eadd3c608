"""Golden vectors of the cart and review CRDTs, from :mod:`crdt`, for the SDKs that port them.

A vector file is a list of **traces**. A trace is a small world of replicas (devices and the hub)
that run mutators and exchange deltas and whole states as bytes, the way they do through a hub:

* ``{"op": "mutate", "dev": i, "call": [name, args...], "delta": hex}``: device ``i`` runs the
  mutator on its replica; the delta's MessagePack bytes must be ``delta``, and the device applies
  the delta it made (the object, not its bytes);
* ``{"op": "deliver", "dev": i, "payload": hex}`` (or ``"json": {...}``, the codec's JSON-safe
  form): device ``i`` decodes the payload and applies it;

and after each step ``"after"``, the device's whole state as MessagePack bytes (hex), and ``"view"``,
what the app reads of it (value, conflicts, rejected edits, context, ...). ``"final"`` holds each
device's state in both codec forms. A port replays a trace and must produce the same bytes and the
same views: that checks its decoder, encoder, mutators and join against this implementation, byte
for byte (insertion orders included, since they decide the encoding's order).

``"errors"`` lists payloads that every decoder must refuse (hex MessagePack, or a JSON form).

    python clients/golden/generate.py          # rewrite clients/golden/*.json
    python clients/golden/generate.py --check  # exit 1 if they differ (tests/test_golden_vectors.py)

The worlds are drawn from a seeded ``random.Random``: the files are a pure function of this script
and :mod:`crdt`. tests/test_client_crdt_cross.py drives the same machinery with hypothesis.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from crdt import codec
from crdt.cart import Cart
from crdt.hlc import Timestamp
from crdt.review import ModerationStatus, Review
from crdt.wire import encode_context

HERE = Path(__file__).resolve().parent
Choose = Callable[[int], int]  # choose(n): an integer in [0, n)

HUB = "~hub"
WALL0 = 1_790_000_000_000
CART_SKUS = ("tea", "LIP-001", "thé-vert", "🍵-mug", "a")
REVIEW_URLS = ("https://img/1", "https://img/2", "https://img/é")


def hexed(data: bytes) -> str:
    return data.hex()


# ------------------------------------------------------------------------------------------ views


def cart_view(cart: Cart) -> dict[str, Any]:
    ts = cart.max_timestamp()
    return {
        "value": cart.value(),
        "lines": {sku: [line.quantity, list(line.conflicts)] for sku, line in cart.lines().items()},
        "closed": cart.closed,
        "rejected": [
            [e.sku, e.kind, e.dot.replica, e.dot.counter, e.quantity] for e in cart.rejected_edits()
        ],
        "context": encode_context(cart.context),
        "max_ts": None if ts is None else [ts.wall_ms, ts.logical, ts.replica],
    }


def review_view(review: Review) -> dict[str, Any]:
    value = review.value()
    ts = review.max_timestamp()
    mod = review.moderation
    return {
        "value": None
        if value is None
        else {
            "review_id": value.review_id,
            "product": value.product,
            "author": value.author,
            "rating": value.rating,
            "text": value.text,
            "media": list(value.media),
            "status": value.status.value,
            "rating_conflicts": list(value.rating_conflicts),
            "text_conflicts": list(value.text_conflicts),
        },
        "review_id": review.review_id,
        "deleted": review.deleted,
        "erased": review.erased,
        "status": review.status().value,
        "context": encode_context(review.context),
        "moderation": None if mod is None else [mod.seq, mod.status.value, encode_context(mod.judged)],
        "max_ts": None if ts is None else [ts.wall_ms, ts.logical, ts.replica],
    }


# ----------------------------------------------------------------------------------------- worlds


class World:
    """Replicas of one document, the payloads they made, and the trace of what happened."""

    def __init__(self, kind: str, replicas: list[str], choose: Choose) -> None:
        self.kind = kind
        self.replicas = replicas
        self.choose = choose
        self.states: list[Any] = [Cart.new() if kind == "cart" else Review.new() for _ in replicas]
        self.walls = [WALL0 + 1000 * i for i in range(len(replicas))]
        self.logical = [0] * len(replicas)
        self.payloads: list[bytes] = []  # every delta and state sent so far
        self.steps: list[dict[str, Any]] = []
        self.jsonish = 0

    def view(self, state: Any) -> dict[str, Any]:
        return cart_view(state) if self.kind == "cart" else review_view(state)

    def _record(self, step: dict[str, Any], dev: int) -> None:
        state = self.states[dev]
        step["after"] = hexed(codec.to_msgpack(state))
        step["view"] = self.view(state)
        self.steps.append(step)

    def stamp(self, dev: int) -> tuple[int, int]:
        """A timestamp of device ``dev``'s own clock: its walls sometimes tie with others'."""
        jump = self.choose(3)
        if jump == 0:
            self.logical[dev] += 1
        else:
            self.walls[dev] += jump * 500
            self.logical[dev] = 0
        return self.walls[dev], self.logical[dev]

    def mutate(self, dev: int, call: list[Any]) -> Any:
        delta = run_call(self.states[dev], call)
        data = codec.to_msgpack(delta)
        self.payloads.append(data)
        self.states[dev].apply(delta)
        self._record({"op": "mutate", "dev": dev, "call": call, "delta": hexed(data)}, dev)
        return delta

    def deliver(self, dev: int, data: bytes) -> None:
        self.jsonish += 1
        step: dict[str, Any] = {"op": "deliver", "dev": dev}
        if self.jsonish % 4 == 0:  # one in four through the JSON-safe form
            form = codec.to_dict(codec.from_msgpack(data))
            step["json"] = form
            payload = codec.from_dict(json.loads(json.dumps(form)))
        else:
            step["payload"] = hexed(data)
            payload = codec.from_msgpack(data)
        self.states[dev].apply(payload)
        self._record(step, dev)

    def exchange(self) -> None:
        """Deliver an earlier payload (a duplicate, late or out of order) or a whole state."""
        dev = self.choose(len(self.replicas))
        if self.payloads and self.choose(3):
            self.deliver(dev, self.payloads[self.choose(len(self.payloads))])
        else:
            source = self.choose(len(self.replicas))
            data = codec.to_msgpack(self.states[source])
            self.payloads.append(data)
            self.deliver(dev, data)

    def trace(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "type": self.kind,
            "replicas": self.replicas,
            "steps": self.steps,
            "final": [{"msgpack": hexed(codec.to_msgpack(s)), "json": codec.to_dict(s)} for s in self.states],
        }


def cart_step(world: World) -> None:
    choose = world.choose
    if choose(5) < 2:
        world.exchange()
        return
    dev = choose(len(world.replicas))
    cart: Cart = world.states[dev]
    replica = world.replicas[dev]
    if cart.closed:
        world.exchange()
        return
    if replica == HUB:
        if choose(12) == 0:
            world.mutate(dev, ["close", replica])
        else:
            world.exchange()
        return
    skus = list(cart.value()) + list(CART_SKUS)
    sku = skus[choose(len(skus))] if choose(3) else CART_SKUS[choose(len(CART_SKUS))]
    kind = choose(5)
    if kind < 2:
        amount = 1 + choose(3) if choose(4) else 999
        world.mutate(dev, ["add", replica, sku, amount])
    elif kind < 4:
        quantity = choose(6)
        wall, logical = world.stamp(dev)
        world.mutate(dev, ["set", replica, sku, quantity, wall, logical])
    else:
        world.mutate(dev, ["remove", replica, sku])


REVIEW_ID = "17fd2b36-3c1e-4b7a-9a41-5f2f8f0c9e11"
PRODUCT_ID = "0b7c2e1a-9d3f-4c55-8e21-7a6b5c4d3e2f"
STATUSES = (ModerationStatus.PUBLISHED, ModerationStatus.FLAGGED, ModerationStatus.REJECTED)


def review_step(world: World, seqs: list[int]) -> None:
    choose = world.choose
    if choose(5) < 2:
        world.exchange()
        return
    dev = choose(len(world.replicas))
    review: Review = world.states[dev]
    replica = world.replicas[dev]
    if replica == HUB:
        if review.erased or choose(4) == 0:
            if not review.erased and choose(8) == 0:
                world.mutate(dev, ["erase", replica])
            else:
                world.exchange()
            return
        seqs[0] += 1
        status = STATUSES[choose(len(STATUSES))]
        world.mutate(dev, ["moderate", seqs[0], status.value])
        return
    if review.erased or review.deleted:
        world.exchange()
        return
    kind = choose(12)
    if review.review_id is None or kind == 0:
        world.mutate(dev, ["create", REVIEW_ID, PRODUCT_ID, "ana"])
    elif kind < 4:
        rating = 1 + choose(5)
        wall, logical = world.stamp(dev)
        world.mutate(dev, ["set_rating", replica, rating, wall, logical])
    elif kind < 7:
        texts = ("Great", "Meh", "", "Très bien 👍", "Great")
        text = texts[choose(len(texts))]
        wall, logical = world.stamp(dev)
        world.mutate(dev, ["set_text", replica, text, wall, logical])
    elif kind < 9:
        url = REVIEW_URLS[choose(len(REVIEW_URLS))]
        world.mutate(dev, ["add_media", replica, url])
    elif kind < 11:
        url = REVIEW_URLS[choose(len(REVIEW_URLS))]
        world.mutate(dev, ["remove_media", replica, url])
    elif choose(4) == 0:
        world.mutate(dev, ["delete", replica])
    else:
        world.exchange()


def run_call(state: Any, call: list[Any]) -> Any:
    """The delta of one mutator call as a trace writes it: ``[name, args...]`` (a timestamp is its
    wall and logical parts; its replica is the writer's)."""
    name, args = call[0], call[1:]
    if name == "set":
        replica, sku, quantity, wall, logical = args
        return state.set(replica, sku, quantity, Timestamp(wall, logical, replica))
    if name in ("set_rating", "set_text"):
        replica, value, wall, logical = args
        return getattr(state, name)(replica, value, Timestamp(wall, logical, replica))
    if name == "moderate":
        return state.moderate(args[0], ModerationStatus(args[1]))
    return getattr(state, name)(*args)


def run_world(kind: str, replicas: list[str], choose: Choose, steps: int) -> World:
    world = World(kind, replicas, choose)
    seqs = [0]
    for _ in range(steps):
        if kind == "cart":
            cart_step(world)
        else:
            review_step(world, seqs)
    # Then everyone hears of everyone: the replicas converge.
    for target in range(len(replicas)):
        for source in range(len(replicas)):
            if source != target:
                world.deliver(target, codec.to_msgpack(world.states[source]))
    return world


# ----------------------------------------------------------------------------------- fixed cases


def worked_example() -> dict[str, Any]:
    """crdt/cart.py's worked example, step by step, as a trace."""
    world = World("cart", ["P", "L"], lambda n: 0)
    p, laptop = 0, 1
    world.mutate(p, ["add", "P", "tea", 1])
    world.deliver(laptop, codec.to_msgpack(world.states[p]))
    world.mutate(p, ["add", "P", "tea", 1])
    d3 = world.mutate(laptop, ["set", "L", "tea", 5, 1, 0])
    world.deliver(p, codec.to_msgpack(d3))
    world.mutate(p, ["remove", "P", "tea"])
    world.deliver(laptop, world.payloads[2])
    world.deliver(laptop, world.payloads[-1])
    return world.trace("cart worked example")


def review_erasure() -> dict[str, Any]:
    """A review erased on the hub while a device kept editing: the device's stale state merges in and
    brings nothing back."""
    world = World("review", ["phone", HUB], lambda n: 0)
    phone, hub = 0, 1
    world.mutate(phone, ["create", REVIEW_ID, PRODUCT_ID, "ana"])
    world.mutate(phone, ["set_rating", "phone", 4, WALL0, 0])
    world.deliver(hub, codec.to_msgpack(world.states[phone]))
    world.mutate(hub, ["moderate", 1, "published"])
    world.deliver(phone, world.payloads[-1])
    world.mutate(phone, ["add_media", "phone", REVIEW_URLS[0]])
    world.mutate(hub, ["erase", HUB])
    world.deliver(hub, codec.to_msgpack(world.states[phone]))
    world.deliver(phone, codec.to_msgpack(world.states[hub]))
    return world.trace("review erased while a device edits")


def cart_errors() -> list[dict[str, Any]]:
    ok = Cart.new()
    good = codec.to_dict(ok.merge(ok.add("0123456789abcdef", "tea", 2)))
    bad_json = [
        {"t": "cart", "v": 2, "s": good["s"]},  # unknown version
        {"t": "carts", "v": 1, "s": good["s"]},  # unknown type
        {"t": "cart", "v": 1},  # no state
        {"t": "cart", "v": 1, "s": ["", [], [], 1]},  # 4 items
        {"t": "cart", "v": 1, "s": [good["s"][0], ["tea", [0, 1, 0], []], []]},  # amount 0
        {"t": "cart", "v": 1, "s": [good["s"][0], ["tea", [1, 1, 2], []], []]},  # index out of table
        {"t": "cart", "v": 1, "s": [good["s"][0], ["tea", [], []], []]},  # empty line
        {"t": "cart", "v": 1, "s": [good["s"][0], ["tea", [0, 1, 2], [], "tea", [0, 2, 1], []], []]},
        {"t": "cart", "v": 1, "s": [good["s"][0], ["tea", [0, 1, 2, 0, 1, 3], []], []]},  # a dot twice
        {"t": "cart", "v": 1, "s": [good["s"][0], [], [0, 0]]},  # context entry 0
        {"t": "cart", "v": 1, "s": [good["s"][0], [], [0, 2**53]]},  # past 2**53 - 1
        {"t": "cart", "v": 1, "s": ["abc", [], []]},  # bad table
        {"t": "cart", "v": 1, "s": [good["s"][0], [], [], [], []]},  # a snapshot without its dot
        {"t": "cart", "v": 1, "s": [good["s"][0], ["tea", [0, 1, 1_000_001], []], []]},  # too many units
        {"t": "cart", "v": 1, "s": [good["s"][0], [], [0, 1, 0, 2]]},  # a replica twice in the vector
    ]
    out: list[dict[str, Any]] = [{"json": j} for j in bad_json]
    out += [
        {"msgpack": hexed(msgpack.packb(["cart", 1]))},
        {"msgpack": hexed(msgpack.packb({"t": "cart", "v": 1, "s": good["s"]}))},
        {"msgpack": "c1"},  # never used
        {"msgpack": hexed(msgpack.packb(["cart", 1, good["s"]]) + b"\x00")},  # extra data
    ]
    return out


def review_errors() -> list[dict[str, Any]]:
    r = Review.new()
    r.apply(r.create(REVIEW_ID, PRODUCT_ID, "ana"))
    good = codec.to_dict(r)
    s = good["s"]
    bad = [
        {"t": "review", "v": 2, "s": s},
        {"t": "review", "v": 1, "s": {**s, "x": 1}},
        {"t": "review", "v": 1, "s": {k: v for k, v in s.items() if k != "f"}},
        {"t": "review", "v": 1, "s": {**s, "f": 4}},
        {"t": "review", "v": 1, "s": {**s, "mod": [1, "maybe", []]}},
        {"t": "review", "v": 1, "s": {**s, "f": 2}},  # erased but holding its product
        {"t": "review", "v": 1, "s": {**s, "r": ".x", "rt": [0, 1, 6, 0, 0]}},  # rating 6
        {"t": "review", "v": 1, "s": {**s, "r": ".x", "m": [0, 1, "u", 0, 1, "v"]}},  # a dot twice
    ]
    return [{"json": j} for j in bad]


# ------------------------------------------------------------------------------------------ files


def _dump(body: dict[str, Any]) -> str:
    """Compact JSON, one trace step per line (small files, readable diffs)."""
    lines = ["{"]
    for i, (key, items) in enumerate(body.items()):
        lines.append(f" {json.dumps(key)}: [")
        for j, item in enumerate(items):
            comma = "," if j < len(items) - 1 else ""
            if isinstance(item, dict) and "steps" in item:
                head = {k: v for k, v in item.items() if k not in ("steps", "final")}
                text = json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1]
                steps = ",\n   ".join(
                    json.dumps(s, ensure_ascii=False, separators=(",", ":")) for s in item["steps"]
                )
                final = json.dumps(item["final"], ensure_ascii=False, separators=(",", ":"))
                lines.append(f'  {text},"steps":[\n   {steps}],\n  "final":{final}}}{comma}')
            else:
                lines.append("  " + json.dumps(item, ensure_ascii=False, separators=(",", ":")) + comma)
        lines.append(" ]" + ("," if i < len(body) - 1 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def build() -> dict[str, str]:
    """File name → contents of every golden file."""
    carts = [worked_example()]
    cart_replicas = [
        ["0123456789abcdef", "a9f3c2e1d0b47865", HUB],
        ["phone", "laptop-Qe2", "📱tablet", HUB],
        ["ffffffffffffffff", "0000000000000000"],
    ]
    for seed in range(12):
        rng = random.Random(1000 + seed)
        replicas = cart_replicas[seed % len(cart_replicas)]
        carts.append(run_world("cart", replicas, rng.randrange, 40).trace(f"cart world {seed}"))
    reviews = [review_erasure()]
    review_replicas = [["phone", "tab", HUB], ["0123456789abcdef", "fedcba9876543210", HUB]]
    for seed in range(10):
        rng = random.Random(2000 + seed)
        replicas = review_replicas[seed % len(review_replicas)]
        reviews.append(run_world("review", replicas, rng.randrange, 30).trace(f"review world {seed}"))
    files = {
        "cart.json": {"traces": carts, "errors": cart_errors()},
        "review.json": {"traces": reviews, "errors": review_errors()},
    }
    return {name: _dump(body) for name, body in files.items()}


def main(argv: list[str]) -> int:
    files = build()
    if "--check" in argv:
        stale = [name for name, text in files.items() if (HERE / name).read_text("utf-8") != text]
        for name in stale:
            print(f"clients/golden/{name} is out of date: python clients/golden/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for name, text in files.items():
        (HERE / name).write_text(text, "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
