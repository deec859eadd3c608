"""Three devices and a server edit one cart and one review over a hostile network, then heal; every
replica must end in the same state, and that state must match a reference model of the rules.

The network reorders, duplicates, drops (and later retransmits) and partitions messages. Messages are
deltas — through the codec, as JSON text or MessagePack — and now and then a whole state. A node
persists its state at some steps only; a crash reverts it to what it last persisted. Write-ahead, as
the cart's docstring asks: a node ships a delta only once the state holding it is persisted (a whole
state may go out at any time). A node that lost writes of its own in a crash takes a new replica id
(:mod:`crdt.dots`). The server writes only moderation (ordered by a durable sequence), checkouts and
erasures, and persists each at once.

The reference model is the list of every write with the context its writer had seen when writing.
After healing, a write *happened* if its dot is in the final context (a write lost in a crash before
it left its device never did), and the rules read directly off causal pasts:

* an add or set of a line survives unless a set or remove of that line has it in its past;
* a checked-out cart counts only the writes some checkout had in its past;
* a rating or text survives unless a later write of that field has it in its past; the winner is the
  latest by (timestamp, dot); a media URL is present if an add of it is in no remove's past;
* deleted or erased wins; moderation is the highest sequence, shown only if it judged every write.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from crdt import codec
from crdt.cart import Cart, ClosedCartError, Line, RejectedEdit
from crdt.context import CausalContext
from crdt.dots import Dot
from crdt.hlc import HybridClock, Timestamp
from crdt.review import ModerationStatus, Review, ReviewGoneError
from tests import crdt_profiles  # noqa: F401  (registers and loads the Hypothesis profile)

DEVICES = ("d0", "d1", "d2")
SERVER = "server"
NODES = (*DEVICES, SERVER)
SKUS = ("tea", "jam")
URLS = ("https://img/1", "https://img/2")
TEXTS = ("good", "bad", "fine")
SKEW_MS = {"d0": 0, "d1": 0, "d2": 900, SERVER: -300}  # d0 and d1 often tie on wall time
START_MS = 1_700_000_000_000


def replica_id(n: int) -> str:
    """Deterministic ids (Hypothesis replays runs) in the canonical 32-hex-digit form."""
    return format((n + 1) * 0x9E3779B97F4A7C15F39CC0605CEDC835 % 2**128, "032x")


@dataclass
class Write:
    """One write, for the model: what it was and what its writer had seen."""

    doc: str
    kind: str
    dot: Dot | None
    past: CausalContext
    key: str | None = None  # SKU or URL
    value: Any = None  # amount, quantity, rating, text or moderation status
    ts: Timestamp | None = None
    seq: int = 0


@dataclass
class Message:
    src: str
    dst: str
    doc: str
    payload: bytes | str


@dataclass
class Node:
    name: str
    replica: str
    clock: HybridClock
    cart: Cart
    review: Review
    saved: tuple[bytes, bytes]
    pending: list[tuple[str, Any]] = field(default_factory=list)  # own deltas not yet persisted
    outbox: list[tuple[str, Any]] = field(default_factory=list)  # persisted, not yet shipped


def encode(value: Cart | Review, as_json: bool) -> bytes | str:
    return json.dumps(codec.to_dict(value)) if as_json else codec.to_msgpack(value)


def decode(payload: bytes | str) -> Any:
    return codec.from_dict(json.loads(payload)) if isinstance(payload, str) else codec.from_msgpack(payload)


class Network(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START_MS
        self.ids = 0
        self.seq = 0
        self.flip = False
        self.writes: list[Write] = []
        self.network: list[Message] = []
        self.dropped: list[Message] = []
        self.group = dict.fromkeys(NODES, 0)
        review = Review.new()
        review.apply(review.create("rev-1", "sku-1", "ana"))
        saved = (codec.to_msgpack(Cart.new()), codec.to_msgpack(review))
        self.nodes = {name: self._boot(name, self._new_id(), saved) for name in NODES}

    # -- plumbing ----------------------------------------------------------------------------------

    def _new_id(self) -> str:
        self.ids += 1
        return replica_id(self.ids)

    def _boot(self, name: str, replica: str, saved: tuple[bytes, bytes]) -> Node:
        cart, review = codec.from_msgpack(saved[0]), codec.from_msgpack(saved[1])
        clock = HybridClock(replica, lambda: self.now + SKEW_MS[name])
        for stamp in (cart.max_timestamp(), review.max_timestamp()):
            if stamp is not None:
                clock.observe(stamp)
        return Node(name, replica, clock, cart, review, saved)

    def _json_next(self) -> bool:
        self.flip = not self.flip
        return self.flip

    def _write(self, node: Node, doc: str, delta: Cart | Review, write: Write) -> None:
        """A local write: through the codec into the node's own state, and into its pending list."""
        delta = decode(encode(delta, self._json_next()))
        (node.cart if doc == "cart" else node.review).apply(delta)
        node.pending.append((doc, delta))
        self.writes.append(write)
        if node.name == SERVER:
            self._persist(node)

    def _persist(self, node: Node) -> None:
        node.saved = (codec.to_msgpack(node.cart), codec.to_msgpack(node.review))
        node.outbox += node.pending
        node.pending.clear()

    def _deliver(self, message: Message) -> None:
        node = self.nodes[message.dst]
        value = decode(message.payload)
        if message.doc == "cart":
            node.cart.apply(value)
        else:
            node.review.apply(value)
        stamp = value.max_timestamp()
        if stamp is not None:
            node.clock.observe(stamp)

    def _cart_write(self, node: Node, kind: str, sku: str | None = None, value: Any = None) -> None:
        cart, past = node.cart, node.cart.context
        dot = past.next_dot(node.replica)
        ts = node.clock.now() if kind == "set" else None
        try:
            if kind == "add":
                delta = cart.add(node.replica, sku, value)
            elif kind == "set":
                delta = cart.set(node.replica, sku, value, ts)
            elif kind == "remove":
                delta = cart.remove(node.replica, sku)
            else:
                delta = cart.close(node.replica)
        except ClosedCartError:
            assert cart.closed
            return
        assert not cart.closed
        self._write(node, "cart", delta, Write("cart", kind, dot, past, sku, value, ts))

    def _review_write(self, node: Node, kind: str, key: str | None = None, value: Any = None) -> None:
        review, past = node.review, node.review.context
        dot = past.next_dot(node.replica)
        ts = node.clock.now() if kind in ("rating", "text") else None
        try:
            if kind == "rating":
                delta = review.set_rating(node.replica, value, ts)
            elif kind == "text":
                delta = review.set_text(node.replica, value, ts)
            elif kind == "add_media":
                delta = review.add_media(node.replica, key)
            elif kind == "remove_media":
                delta = review.remove_media(node.replica, key)
            elif kind == "delete":
                delta = review.delete(node.replica)
            else:
                delta = review.erase(node.replica)
        except ReviewGoneError:
            assert review.deleted or review.erased
            return
        self._write(node, "review", delta, Write("review", kind, dot, past, key, value, ts))

    # -- edits (a few rules with weighted choices, so that edits and deliveries dominate) ------------

    @rule(
        name=st.sampled_from(DEVICES),
        kind=st.sampled_from(("add", "add", "set", "set", "remove")),
        sku=st.sampled_from(SKUS),
        n=st.integers(1, 3),
    )
    def cart_edit(self, name: str, kind: str, sku: str, n: int) -> None:
        self._cart_write(self.nodes[name], kind, sku, n - 1 if kind == "set" else n)

    @rule(name=st.sampled_from(NODES), go=st.integers(0, 5))
    def cart_checkout(self, name: str, go: int) -> None:
        if go == 0:  # rarer than edits: a closed cart ends the cart's story
            self._cart_write(self.nodes[name], "close")

    @rule(
        name=st.sampled_from(DEVICES),
        kind=st.sampled_from(("rating", "text", "add_media", "remove_media")),
        rating=st.integers(1, 5),
        text=st.sampled_from(TEXTS),
        url=st.sampled_from(URLS),
    )
    def review_edit(self, name: str, kind: str, rating: int, text: str, url: str) -> None:
        if kind in ("rating", "text"):
            self._review_write(self.nodes[name], kind, value=rating if kind == "rating" else text)
        else:
            self._review_write(self.nodes[name], kind, key=url)

    @rule(name=st.sampled_from(NODES), kind=st.sampled_from(("delete", "erase")), go=st.integers(0, 7))
    def review_delete_or_erase(self, name: str, kind: str, go: int) -> None:
        if go == 0 and not (kind == "delete" and name == SERVER):
            self._review_write(self.nodes[name], kind)

    @rule(status=st.sampled_from(ModerationStatus))
    def moderate(self, status: ModerationStatus) -> None:
        server = self.nodes[SERVER]
        self.seq += 1  # the server's durable sequence: never reused, even across crashes
        delta = server.review.moderate(self.seq, status)
        write = Write("review", "moderate", None, server.review.context, None, status, seq=self.seq)
        self._write(server, "review", delta, write)

    # -- time, persistence, crashes ----------------------------------------------------------------

    @rule(ms=st.integers(0, 700))
    def tick(self, ms: int) -> None:
        self.now += ms

    @rule(name=st.sampled_from(NODES), crash=st.booleans())
    def disk(self, name: str, crash: bool) -> None:
        """Persist, or crash: back to what was last persisted."""
        node = self.nodes[name]
        if not crash:
            self._persist(node)
            return
        lost_own_writes = bool(node.pending)
        replica = self._new_id() if lost_own_writes else node.replica
        self.nodes[name] = self._boot(name, replica, node.saved)
        self.nodes[name].outbox = node.outbox  # the outbox is persisted with the state

    # -- the network -------------------------------------------------------------------------------

    @rule(name=st.sampled_from(NODES))
    def ship_deltas(self, name: str) -> None:
        node = self.nodes[name]
        for doc, delta in node.outbox:
            for peer in NODES:
                if peer != name:
                    self.network.append(Message(name, peer, doc, encode(delta, self._json_next())))
        node.outbox.clear()

    @rule(src=st.sampled_from(NODES), dst=st.sampled_from(NODES))
    def ship_state(self, src: str, dst: str) -> None:
        if src != dst:
            node = self.nodes[src]
            self.network.append(Message(src, dst, "cart", encode(node.cart, self._json_next())))
            self.network.append(Message(src, dst, "review", encode(node.review, self._json_next())))

    @precondition(lambda self: self.network)
    @rule(pick=st.integers(0, 1_000), duplicate=st.booleans())
    def deliver(self, pick: int, duplicate: bool) -> None:
        reachable = [i for i, m in enumerate(self.network) if self.group[m.src] == self.group[m.dst]]
        if reachable:
            index = reachable[pick % len(reachable)]
            message = self.network[index] if duplicate else self.network.pop(index)
            self._deliver(message)

    @precondition(lambda self: self.network or self.dropped)
    @rule(pick=st.integers(0, 1_000), retransmit=st.booleans())
    def lose(self, pick: int, retransmit: bool) -> None:
        """Drop a message in flight, or retransmit one dropped earlier."""
        if retransmit and self.dropped:
            self.network.append(self.dropped.pop(pick % len(self.dropped)))
        elif self.network:
            self.dropped.append(self.network.pop(pick % len(self.network)))

    @rule(sides=st.tuples(*[st.integers(0, 1)] * len(NODES)))
    def partition(self, sides: tuple[int, ...]) -> None:
        """Split the nodes in two (all on one side: healed)."""
        self.group = dict(zip(NODES, sides, strict=True))

    @invariant()
    def states_survive_the_codec_and_gone_reviews_stay_gone(self) -> None:
        for node in self.nodes.values():
            assert codec.from_msgpack(codec.to_msgpack(node.cart)) == node.cart
            assert codec.from_dict(codec.to_dict(node.review)) == node.review
            if node.review.erased:
                assert not node.review.has_content() and node.review.moderation is None
            if node.review.erased or node.review.deleted:
                assert node.review.value() is None

    # -- healing and the model ---------------------------------------------------------------------

    def teardown(self) -> None:
        if sys.exc_info()[0] is not None:  # a step failed: report that, not a consequence of it
            return
        self.partition((0,) * len(NODES))
        for name in NODES:
            self._persist(self.nodes[name])
            self.ship_deltas(name)
        self.network += self.dropped
        self.dropped.clear()
        while self.network:
            self._deliver(self.network.pop())
        # Anti-entropy: each node takes in every other node's whole state, each in its own order, so
        # that a merge that depended on order would show as replicas that differ.
        states = {name: (encode(n.cart, True), encode(n.review, False)) for name, n in self.nodes.items()}
        for i, name in enumerate(NODES):
            for other in NODES[i + 1 :] + NODES[:i]:
                self._deliver(Message(other, name, "cart", states[other][0]))
                self._deliver(Message(other, name, "review", states[other][1]))
        hub = self.nodes[NODES[0]]
        for node in self.nodes.values():
            assert node.cart == hub.cart
            assert node.review == hub.review
        self.check_cart(hub.cart)
        self.check_review(hub.review)

    def check_cart(self, cart: Cart) -> None:
        writes = [w for w in self.writes if w.doc == "cart" and cart.context.contains(w.dot)]
        live = model_lines(writes)
        closes = [w for w in writes if w.kind == "close"]
        if not closes:
            assert not cart.closed
            assert cart.lines() == {sku: view for sku, (view, _) in live.items()}
            return
        assert cart.closed
        frozen = CausalContext.empty()
        for close in closes:
            frozen = frozen.merge(close.past).add(close.dot)
        shown = model_lines([w for w in writes if frozen.contains(w.dot)])
        assert cart.lines() == {sku: view for sku, (view, _) in shown.items()}
        expected: set[RejectedEdit] = set()
        for sku, (_view, survivors) in live.items():
            expected |= {
                RejectedEdit(sku, w.kind, w.dot, w.value) for w in survivors if not frozen.contains(w.dot)
            }
        for sku, (_view, survivors) in shown.items():
            alive = {w.dot for w in live.get(sku, (None, []))[1]}
            expected |= {RejectedEdit(sku, "cancel", w.dot, w.value) for w in survivors if w.dot not in alive}
        assert set(cart.rejected_edits()) == expected

    def check_review(self, review: Review) -> None:
        writes = [
            w
            for w in self.writes
            if w.doc == "review" and w.dot is not None and review.context.contains(w.dot)
        ]
        assert review.review_id == "rev-1"
        if any(w.kind == "erase" for w in writes):
            assert review.erased and review.value() is None
            assert not review.has_content() and review.moderation is None
            return
        assert not review.erased
        if any(w.kind == "delete" for w in writes):
            assert review.deleted and review.value() is None
            return
        value = review.value()
        assert value is not None and not review.deleted
        rating, rating_conflicts = model_register([w for w in writes if w.kind == "rating"])
        text, text_conflicts = model_register([w for w in writes if w.kind == "text"])
        assert (value.rating, value.rating_conflicts) == (rating, rating_conflicts)
        assert (value.text, value.text_conflicts) == (text, text_conflicts)
        media = {
            w.key
            for w in writes
            if w.kind == "add_media"
            and not any(r.key == w.key and r.past.contains(w.dot) for r in writes if r.kind == "remove_media")
        }
        assert set(value.media) == media
        moderations = [w for w in self.writes if w.kind == "moderate"]
        status = ModerationStatus.PENDING
        if moderations:
            last = max(moderations, key=lambda w: w.seq)
            assert review.moderation is not None and review.moderation.seq == last.seq
            if all(last.past.contains(w.dot) for w in writes):
                status = last.value
        assert value.status is status


def model_lines(writes: list[Write]) -> dict[str, tuple[Line, list[Write]]]:
    """SKU → (the line, its surviving add and set writes), from writes and their pasts alone."""
    out: dict[str, tuple[Line, list[Write]]] = {}
    for sku in SKUS:
        mine = [w for w in writes if w.key == sku]
        cancelling = [w for w in mine if w.kind in ("set", "remove")]
        survivors = [
            w
            for w in mine
            if w.kind in ("add", "set") and not any(c.past.contains(w.dot) for c in cancelling)
        ]
        if not survivors:
            continue
        sets = sorted((w for w in survivors if w.kind == "set"), key=lambda w: (w.ts, w.dot), reverse=True)
        base = sets[0].value if sets else 0
        conflicts: list[int] = []
        for w in sets[1:]:
            if w.value != base and w.value not in conflicts:
                conflicts.append(w.value)
        added = sum(w.value for w in survivors if w.kind == "add")
        out[sku] = (Line(base + added, tuple(conflicts)), survivors)
    return out


def model_register(writes: list[Write]) -> tuple[Any, tuple[Any, ...]]:
    survivors = [w for w in writes if not any(o.past.contains(w.dot) for o in writes)]
    if not survivors:
        return None, ()
    ranked = sorted(survivors, key=lambda w: (w.ts, w.dot), reverse=True)
    winner = ranked[0].value
    others: list[Any] = []
    for w in ranked[1:]:
        if w.value != winner and w.value not in others:
            others.append(w.value)
    return winner, tuple(others)


TestConvergence = Network.TestCase
