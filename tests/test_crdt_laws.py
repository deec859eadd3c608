"""The CRDT laws, one generic suite over every type (see crdt/base.py), plus the codec's contract.

Each law is a plain function ``check_*(model, data)``; the suite runs it with hypothesis for every
model in ``MODELS``, and ``test_a_broken_merge_*`` runs the very same functions on deliberately
broken types to show that they catch them. States come from worlds of replicas (reachable states,
see tests/crdt_strategies.py) and go through both codec forms before use, as does every delta.

HYPOTHESIS_PROFILE=deep runs long (the profiles are in tests/crdt_profiles.py, shared by the CRDT suites).
"""

from __future__ import annotations

import doctest
import functools
import importlib
import json
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt import codec
from crdt.ccounter import CCounter
from crdt.codec import CodecError
from crdt.context import CausalContext
from crdt.dots import Dot
from crdt.flags import DWFlag, EWFlag
from crdt.gcounter import GCounter
from crdt.hlc import Timestamp
from crdt.lww_register import LWWRegister
from crdt.mv_register import MVRegister
from crdt.ormap import ORMap
from crdt.orset import AWORSet
from crdt.pncounter import PNCounter
from tests.crdt_strategies import (
    MAP_DEPTH,
    MODELS,
    REPLICAS,
    Model,
    aws_ops,
    canonical_encoding,
    gcounter_ops,
    is_json_safe,
    lww_ops,
    roundtrip,
    suite_settings,
    worlds,
)

by_model = pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])


def le(a: Any, b: Any) -> bool:
    """a ⊑ b in the lattice: merging a into b changes nothing."""
    return bool(a.merge(b) == b)


def replica_states(world: Any) -> list[Any]:
    return [roundtrip(world.states[r]) for r in REPLICAS]


# -------------------------------------------------------------------------------------------- laws


def check_idempotent(model: Model, data: st.DataObject) -> None:
    for s in replica_states(data.draw(worlds(model), label="world")):
        assert s.merge(s) == s, "a ⊔ a ≠ a"
        t = roundtrip(s)
        t.apply(s)
        assert t == s, "applying a state to itself changed it"


def check_commutative(model: Model, data: st.DataObject) -> None:
    a, b, c = replica_states(data.draw(worlds(model), label="world"))
    for x, y in ((a, b), (b, c), (a, c)):
        assert roundtrip(x.merge(y)) == roundtrip(y.merge(x)), "a ⊔ b ≠ b ⊔ a"


def check_associative(model: Model, data: st.DataObject) -> None:
    a, b, c = replica_states(data.draw(worlds(model), label="world"))
    assert roundtrip(a.merge(b).merge(c)) == roundtrip(a.merge(b.merge(c))), "(a ⊔ b) ⊔ c ≠ a ⊔ (b ⊔ c)"


def check_inflation(model: Model, data: st.DataObject) -> None:
    world = data.draw(worlds(model), label="world")
    a, b, c = replica_states(world)
    joined = roundtrip(a.merge(b))
    assert le(a, joined) and le(b, joined), "a state shrank in a merge"
    assert le(model.cls.new(), a), "new() is not the bottom"
    # Every delta was applied where it was made, and states only grow: none is lost in the join.
    everything = roundtrip(joined.merge(c))
    for delta in world.log:
        assert le(delta, everything), "a delta applied earlier is no longer in the state"


def check_merge_is_apply(model: Model, data: st.DataObject) -> None:
    a, b, _ = replica_states(data.draw(worlds(model), label="world"))
    before_a, before_b = canonical_encoding(a), canonical_encoding(b)
    merged = a.merge(b)
    assert (canonical_encoding(a), canonical_encoding(b)) == (before_a, before_b), "merge changed an operand"
    applied = roundtrip(a)
    applied.apply(b)
    assert applied == merged, "apply and merge disagree"
    assert canonical_encoding(b) == before_b, "apply changed the delta"


def check_delta(model: Model, data: st.DataObject) -> None:
    """``state ⊔ δ(state)`` is the mutated state: it reads what the operation specifies, apply agrees
    with merge, the mutator leaves the state alone, and a replica that has seen the state gets the
    same from the delta as from the whole mutated state. Causal deltas carry only the new dots and a
    context of those and the dots they replace."""
    world = data.draw(worlds(model), label="world")
    r = data.draw(st.sampled_from(REPLICAS), label="replica")
    op = data.draw(model.ops(MAP_DEPTH), label="op")
    state = roundtrip(world.states[r])
    before = canonical_encoding(state)
    ts = world.clocks[r].now()
    delta = roundtrip(op.run(state, r, ts))
    assert canonical_encoding(state) == before, "the mutator changed the state it was called on"

    mutated = roundtrip(state.merge(delta))
    applied = roundtrip(state)
    applied.apply(delta)
    assert applied == mutated, "state.apply(δ) ≠ state ⊔ δ"
    assert model.observe(mutated) == op.expect(state, r, ts), f"{op.label} did not do what it says"
    assert le(state, mutated) and le(delta, mutated)
    for other in REPLICAS:
        seen = roundtrip(world.states[other].merge(state))
        assert seen.merge(delta) == seen.merge(mutated), "the delta and the mutated state disagree elsewhere"

    if model.causal:
        new_dots = set(model.cls.store_dots(delta.store))
        assert not any(state.context.contains(d) for d in new_dots), "a delta reused a seen dot"
        old_dots = set(model.cls.store_dots(state.store))
        assert set(delta.context.dots()) <= new_dots | old_dots, "the delta's context is not just its dots"


def check_convergence(model: Model, data: st.DataObject) -> None:
    """Every delta, delivered in any order and some twice, gives the join of all replicas."""
    world = data.draw(worlds(model), label="world")
    everything = functools.reduce(lambda x, y: x.merge(y), replica_states(world))
    order = data.draw(st.permutations(range(len(world.log))), label="order")
    again = data.draw(st.lists(st.sampled_from(order), max_size=3) if order else st.just([]), label="again")
    fresh = model.cls.new()
    for i in [*order, *again]:
        fresh.apply(world.log[i])
    assert roundtrip(fresh) == everything, "delivering every delta does not reach the join of the replicas"


LAWS = [
    check_idempotent,
    check_commutative,
    check_associative,
    check_inflation,
    check_merge_is_apply,
    check_delta,
    check_convergence,
]


@by_model
@pytest.mark.parametrize("law", LAWS, ids=[law.__name__.removeprefix("check_") for law in LAWS])
@suite_settings
@given(data=st.data())
def test_law(model: Model, law: Callable[[Model, st.DataObject], None], data: st.DataObject) -> None:
    law(model, data)


# -------------------------------------------------------------- the laws catch broken merges


class UnionAWORSet(AWORSet):
    """Merge = plain union of the entries, ignoring the contexts: a removal never propagates."""

    @classmethod
    def join_stores(cls, a: Any, ca: CausalContext, b: Any, cb: CausalContext) -> Any:
        out = dict(a)
        for element, dots in b.items():
            out[element] = out.get(element, frozenset()) | dots
        return out


class SumGCounter(GCounter):
    """Merge = pointwise sum instead of maximum: a delta received twice counts twice."""

    def merge(self, other: Any) -> Any:
        counts = dict(self.counts)
        for r, n in other.counts.items():
            counts[r] = counts.get(r, 0) + n
        return type(self)(counts)

    def apply(self, delta: Any) -> None:
        self._counts = self.merge(delta).counts


class ArrivalLWW(LWWRegister):
    """Merge = the last one to arrive wins, whatever the timestamps."""

    def merge(self, other: Any) -> Any:
        return (
            type(self)(other.value(), other.timestamp)
            if other.timestamp
            else type(self)(self.value(), self.timestamp)
        )

    def apply(self, delta: Any) -> None:
        if delta.timestamp is not None:
            self._value, self._ts = delta.value(), delta.timestamp


# The broken types go through the same codec as the real ones, under tags of their own.
codec.register(UnionAWORSet, "test-union-aws", 1, UnionAWORSet.encode, UnionAWORSet.decode)
codec.register(SumGCounter, "test-sum-gc", 1, SumGCounter.encode, SumGCounter.decode)
codec.register(ArrivalLWW, "test-arrival-lww", 1, ArrivalLWW.encode, ArrivalLWW.decode)


def falsify(law: Callable[[Model, st.DataObject], None], model: Model) -> AssertionError:
    """Run ``law`` on ``model`` as the suite does; return the counterexample's AssertionError."""

    @settings(
        max_examples=1000,
        derandomize=True,
        database=None,
        deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        law(model, data)

    with pytest.raises(AssertionError) as failure:
        prop()
    return failure.value


def test_a_broken_merge_plain_union_is_caught() -> None:
    # A lattice all right (union is ACI and inflationary)... but removals never take effect:
    broken = Model("UnionAWORSet", UnionAWORSet, aws_ops)
    for law in (check_idempotent, check_commutative, check_associative, check_inflation):
        law_passes(law, broken)
    failure = falsify(check_delta, broken)
    assert "did not do what it says" in str(failure)


def test_a_broken_merge_that_sums_is_caught() -> None:
    failure = falsify(check_idempotent, Model("SumGCounter", SumGCounter, gcounter_ops))
    assert "a ⊔ a ≠ a" in str(failure)


def test_a_broken_merge_by_arrival_is_caught() -> None:
    failure = falsify(check_commutative, Model("ArrivalLWW", ArrivalLWW, lww_ops))
    assert "a ⊔ b ≠ b ⊔ a" in str(failure)


def law_passes(law: Callable[[Model, st.DataObject], None], model: Model) -> None:
    @settings(max_examples=30, database=None, deadline=None, derandomize=True)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        law(model, data)

    prop()


# ------------------------------------------------------------------------------------------ codec

TAGS: dict[str, type[Any]] = {"gc": GCounter, "pnc": PNCounter, "lww": LWWRegister, "mvr": MVRegister}
TAGS |= {"aws": AWORSet, "ewf": EWFlag, "dwf": DWFlag, "cc": CCounter, "orm": ORMap}


def test_every_type_is_registered_under_its_short_tag_version_1() -> None:
    assert {m.cls for m in MODELS} == set(TAGS.values())
    for tag, cls in TAGS.items():
        assert tag == cls.TYPE_TAG
        assert codec.to_dict(cls.new())["t"] == tag and codec.to_dict(cls.new())["v"] == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"t": "nope", "v": 1, "s": {}},
        {"t": "gc", "v": 2, "s": {}},
        {"t": "gc", "v": 0, "s": {}},
        {"t": "gc", "v": "1", "s": {}},
        {"t": "gc", "v": True, "s": {}},
        {"t": 1, "v": 1, "s": {}},
        {"t": "gc", "v": 1},
        {"t": "gc", "v": 1, "s": {}, "x": 0},
        {"t": "gc", "v": 1, "x": {}},
        ["gc", 1, {}],  # the MessagePack envelope is not the JSON one
        None,
    ],
)
def test_an_unknown_tag_or_version_or_envelope_is_an_error_in_json(payload: Any) -> None:
    with pytest.raises(CodecError):
        codec.from_dict(payload)


@pytest.mark.parametrize(
    "payload",
    [
        ["nope", 1, {}],
        ["gc", 2, {}],
        ["gc", 0, {}],
        ["gc", "1", {}],
        ["gc", True, {}],
        [1, 1, {}],
        ["gc", 1],
        ["gc", 1, {}, 0],
        {"t": "gc", "v": 1, "s": {}},  # the JSON envelope is not the MessagePack one
        None,
    ],
)
def test_an_unknown_tag_or_version_or_envelope_is_an_error_in_messagepack(payload: Any) -> None:
    with pytest.raises(CodecError):
        codec.from_msgpack(msgpack.packb(payload))


def test_the_two_envelopes_carry_the_same_tag_version_and_state() -> None:
    value = GCounter({"a": 2})
    as_dict = codec.to_dict(value)
    assert msgpack.unpackb(codec.to_msgpack(value)) == [as_dict["t"], as_dict["v"], as_dict["s"]]


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_a_future_version_of_any_type_is_an_error_not_a_guess(tag: str) -> None:
    current = codec.to_dict(TAGS[tag].new())
    with pytest.raises(CodecError, match="unknown type"):
        codec.from_dict({**current, "v": 2})


CTX = {"vv": {"a": 2}, "cloud": []}  # a context that has seen a:1 and a:2
MALFORMED: dict[str, list[Any]] = {
    "gc": [None, [], {"a": 0}, {"a": -1}, {"a": True}, {"a": "1"}, {"a": 1.0}, {"": 1}, {"a": 2**64}],
    "pnc": [{}, {"p": {}}, {"p": {}, "n": {}, "z": {}}, {"p": [], "n": {}}, {"p": {"a": 0}, "n": {}}],
    "lww": [
        {"val": 1},
        [1, [1, 0, "a"]],
        {"val": 1, "ts": [1, 0]},
        {"val": 1, "ts": [-1, 0, "a"]},
        {"val": 1, "ts": [1, 0, ""]},
        {"val": 1, "ts": [1, False, "a"]},
        {"val": 1.5, "ts": [1, 0, "a"]},
        {"val": {"k": 1.5}, "ts": [1, 0, "a"]},
        {"val": b"x", "ts": [1, 0, "a"]},
        {"val": 2**63, "ts": [1, 0, "a"]},
        {"val": {"\ud800": 1}, "ts": [1, 0, "a"]},
    ],
    "mvr": [
        {"e": [], "c": CTX, "x": 1},
        {"e": {}, "c": CTX},
        {"e": [[["a", 3], [1, 0], "v"]], "c": CTX},  # dot not in the context
        {"e": [[["a", 1], [1, 0], "v"], [["a", 1], [1, 0], "v"]], "c": CTX},  # twice
        {"e": [[["a", 0], [1, 0], "v"]], "c": CTX},
        {"e": [[["a", 1], [1, 0, "a"], "v"]], "c": CTX},
        {"e": [[["a", 1], [1, 0], 0.5]], "c": CTX},
        {"e": [[["a", 1], [1, 0]]], "c": CTX},
        {"e": [], "c": {"vv": {"a": 0}, "cloud": []}},
        {"e": [], "c": {"vv": {}, "cloud": [["a", 3], ["a", 3]]}},
        {"e": [], "c": {"vv": {}}},
        {"e": [], "c": {"vv": [], "cloud": []}},
        {"e": [], "c": {"vv": {}, "cloud": [["a", 1, 2]]}},
    ],
    "aws": [
        {"e": [[True, [["a", 1]]]], "c": CTX},
        {"e": [[1.5, [["a", 1]]]], "c": CTX},
        {"e": [[None, [["a", 1]]]], "c": CTX},
        {"e": [["x", [["a", 1]]], ["x", [["a", 2]]]], "c": CTX},  # element twice
        {"e": [["x", []]], "c": CTX},  # no dots
        {"e": [["x", [["a", 1]]], ["y", [["a", 1]]]], "c": CTX},  # one dot, two elements
        {"e": [["x", [["b", 1]]]], "c": CTX},  # dot not in the context
        {"e": {"x": [["a", 1]]}, "c": CTX},
        {"e": [["x", [["a", 1]], 0]], "c": CTX},
    ],
    "ewf": [
        {"e": [["a", 3]], "c": CTX},
        {"e": [["a", 1], ["a", 1]], "c": CTX},
        {"e": {}, "c": CTX},
        {"e": []},
    ],
    "dwf": [
        {"e": {"on": []}, "c": CTX},
        {"e": {"on": [["a", 1]], "off": [["a", 1]]}, "c": CTX},
        {"e": {"on": [], "off": [["b", 1]]}, "c": CTX},
        {"e": [[], []], "c": CTX},
    ],
    "cc": [
        {"e": [[["a", 1], True]], "c": CTX},
        {"e": [[["a", 1], 1.0]], "c": CTX},
        {"e": [[["a", 1], 2**63]], "c": CTX},
        {"e": [[["a", 3], 1]], "c": CTX},
        {"e": [[["a", 1], 1], [["a", 1], 2]], "c": CTX},
    ],
    "orm": [
        {"e": [["f", "nope", []]], "c": CTX},
        {"e": [["f", "gc", {"a": 1}]], "c": CTX},  # a GCounter cannot be nested
        {"e": [["f", "aws", [["x", [["a", 1]]]]], ["f", "aws", [["y", [["a", 2]]]]]], "c": CTX},
        {"e": [["f", "aws", []]], "c": CTX},  # an empty field
        {"e": [[1, "aws", [["x", [["a", 1]]]]]], "c": CTX},
        {"e": [["f", "aws", [["x", [["b", 1]]]]]], "c": CTX},  # nested dot not in the context
        {"e": [["f", "aws", [["x", [["a", 1]]]]], ["g", "ewf", [["a", 1]]]], "c": CTX},  # dot used twice
        {"e": [["f", "orm", [["g", "mvr", [[["a", 1], [1, 0], 0.5]]]]]], "c": CTX},  # deep and bad
        {"e": [["f", "aws"]], "c": CTX},
    ],
}


@pytest.mark.parametrize(
    ("tag", "state"), [(tag, state) for tag, states in MALFORMED.items() for state in states], ids=str
)
def test_a_malformed_payload_is_an_error(tag: str, state: Any) -> None:
    with pytest.raises(CodecError):
        codec.from_dict({"t": tag, "v": 1, "s": state})


def test_the_malformed_table_covers_every_type() -> None:
    assert set(MALFORMED) == set(TAGS)


JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3) | st.binary(max_size=2),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=12,
)


def _decodes_or_refuses(payload: Any) -> None:
    try:
        value = codec.from_dict(payload)
    except CodecError:
        return
    roundtrip(value)  # what is accepted is a valid state: it encodes and comes back equal


@pytest.mark.parametrize("tag", sorted(TAGS))
@suite_settings
@given(junk=JUNK)
def test_junk_payloads_decode_to_a_valid_state_or_a_codec_error(tag: str, junk: Any) -> None:
    _decodes_or_refuses({"t": tag, "v": 1, "s": junk})


def _paths(x: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(x, list):
        for i, item in enumerate(x):
            out += _paths(item, (*prefix, i))
    elif isinstance(x, dict):
        for k, v in x.items():
            out += _paths(v, (*prefix, k))
    return out


def _replace(x: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(x, list):
        return [_replace(v, rest, new) if i == head else v for i, v in enumerate(x)]
    return {k: _replace(v, rest, new) if k == head else v for k, v in x.items()}


@by_model
@suite_settings
@given(data=st.data())
def test_damaged_payloads_decode_to_a_valid_state_or_a_codec_error(model: Model, data: st.DataObject) -> None:
    world = data.draw(worlds(model, max_steps=6), label="world")
    payload = codec.to_dict(world.states[data.draw(st.sampled_from(REPLICAS))])
    path = data.draw(st.sampled_from(_paths(payload["s"])), label="path")
    junk = data.draw(JUNK, label="junk")
    _decodes_or_refuses({**payload, "s": _replace(payload["s"], path, junk)})


@suite_settings
@given(blob=st.binary(max_size=40))
def test_random_bytes_are_messagepack_of_a_valid_state_or_a_codec_error(blob: bytes) -> None:
    try:
        value = codec.from_msgpack(blob)
    except CodecError:
        return
    roundtrip(value)


@pytest.mark.parametrize("blob", [b"", b"\xc1", b"\x92", b"\x81\x90\x00", b"\x93\xa2gc\x01\x80\x00"])
def test_bad_messagepack_is_a_codec_error(blob: bytes) -> None:
    with pytest.raises(CodecError):
        codec.from_msgpack(blob)


def test_what_messagepack_cannot_carry_is_a_codec_error_both_ways() -> None:
    with pytest.raises(CodecError):
        codec.to_msgpack(GCounter({"a": 2**64}))  # built around the checks: still no crash
    with pytest.raises(CodecError):
        codec.from_msgpack("not bytes")  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        codec.to_dict(object())


def test_an_unencodable_value_is_refused_at_the_write() -> None:
    ts = Timestamp(1, 0, "a")
    for bad in (1.5, (1, 2), b"x", {1: "x"}, 2**64, {"k": [float("nan")]}):
        with pytest.raises(ValueError):
            LWWRegister.new().write("a", bad, ts)
        with pytest.raises(ValueError):
            MVRegister.new().write("a", bad, ts)
    for element in (True, 1.5, None, ("x",)):
        with pytest.raises(ValueError):
            AWORSet.new().add("a", element)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LWWRegister.new().write("a", "v", Timestamp(1, 0, "b"))  # someone else's timestamp
    with pytest.raises(ValueError):
        GCounter.new().inc("", 1)
    with pytest.raises(ValueError):
        GCounter.new().inc("a", 0)


# ------------------------------------------------------------------------- small edits, small deltas


def _size(delta: Any) -> tuple[int, int]:
    return len(codec.to_msgpack(delta)), len(json.dumps(codec.to_dict(delta)))


def _set_of(n: int) -> AWORSet:
    """What ``n`` adds of ``sku-00000``... on replica "a" reach (built directly: it is faster)."""
    return AWORSet({f"sku-{i:05}": frozenset({Dot("a", i + 1)}) for i in range(n)}, CausalContext({"a": n}))


def _map_of(n: int) -> ORMap:
    """``n`` fields ``line-i``, each a set of one element, written on replica "a"."""
    store = {(f"line-{i:05}", "aws"): {f"sku-{i:05}": frozenset({Dot("a", i + 1)})} for i in range(n)}
    return ORMap(store, CausalContext({"a": n}))


def _map_with_a_set_of(n: int) -> ORMap:
    """One field ``items``: a set of ``n`` elements, written on replica "a"."""
    return ORMap({("items", "aws"): _set_of(n).store}, CausalContext({"a": n}))


def test_the_directly_built_documents_are_the_ones_the_operations_reach() -> None:
    def add(sku: str) -> Callable[[AWORSet], AWORSet]:
        return lambda x: x.add("a", sku)

    s, m, m1 = AWORSet.new(), ORMap.new(), ORMap.new()
    for i in range(10):
        s.apply(s.add("a", f"sku-{i:05}"))
        m.apply(m.update("a", f"line-{i:05}", AWORSet, add(f"sku-{i:05}")))
        m1.apply(m1.update("a", "items", AWORSet, add(f"sku-{i:05}")))
    assert (s, m, m1) == (_set_of(10), _map_of(10), _map_with_a_set_of(10))


@pytest.mark.parametrize(
    ("build", "edit"),
    [
        (_set_of, lambda s, r: s.add(r, "new-sku")),
        (_set_of, lambda s, r: s.add(r, "sku-00003")),  # re-adding an element replaces its dot
        (_set_of, lambda s, r: s.remove(r, "sku-00003")),
        (_map_of, lambda m, r: m.update(r, "new-line", AWORSet, lambda s: s.add(r, "new-sku"))),
        (_map_of, lambda m, r: m.update(r, "line-00003", AWORSet, lambda s: s.add(r, "new-sku"))),
        (_map_of, lambda m, r: m.remove(r, "line-00003")),
        (_map_with_a_set_of, lambda m, r: m.update(r, "items", AWORSet, lambda s: s.add(r, "new-sku"))),
    ],
    ids=[
        "set add",
        "set re-add",
        "set remove",
        "map new field",
        "map nested add",
        "map remove",
        "big nested set",
    ],
)
def test_a_delta_for_one_small_edit_does_not_grow_with_the_document(build: Any, edit: Any) -> None:
    small, big = build(10), build(1000)
    assert len(codec.to_msgpack(big)) > 50 * len(codec.to_msgpack(small)) / 2
    # From a replica that has merged the document: the very same bytes, whatever its size.
    on_small, on_big = small.merge(type(small).new()), big.merge(type(big).new())
    assert _size(edit(on_small, "z")) == _size(edit(on_big, "z"))
    # From the replica that wrote the document: only its dot counter is wider (11 vs 1001).
    (small_mp, small_js), (big_mp, big_js) = _size(edit(small, "a")), _size(edit(big, "a"))
    assert big_mp - small_mp <= 4 and big_js - small_js <= 4
    for delta in (edit(big, "a"), edit(on_big, "z")):
        assert len(list(delta.context.dots())) <= 2


def test_counter_and_register_deltas_hold_one_entry() -> None:
    c, p = GCounter.new(), PNCounter.new()
    for i in range(100):
        c.apply(c.inc(f"r{i}"))
        p.apply(p.dec(f"r{i}"))
    assert c.inc("r5").counts == {"r5": 2}
    assert codec.to_dict(p.dec("r5"))["s"] == {"p": {}, "n": {"r5": 2}}
    reg = MVRegister.new()
    for i in range(100):
        reg.apply(reg.write("a", i, Timestamp(i, 0, "a")))
    assert len(codec.to_dict(reg.write("a", "x", Timestamp(200, 0, "a")))["s"]["e"]) == 1


# -------------------------------------------------------------------------------- who wins what


def _two_replicas(cls: Any, setup: Callable[[Any], Any] | None = None) -> tuple[Any, Any]:
    base = cls.new()
    if setup is not None:
        base.apply(setup(base))
    return base.merge(cls.new()), base.merge(cls.new())


def _exchange(a: Any, da: Any, b: Any, db: Any) -> None:
    a.apply(da)
    b.apply(db)
    a.apply(db)
    b.apply(da)
    assert a == b


def test_aworset_add_wins_over_a_concurrent_remove() -> None:
    a, b = _two_replicas(AWORSet, lambda s: s.add("a", "x"))
    _exchange(a, a.add("a", "x"), b, b.remove("b", "x"))
    assert a.value() == {"x"}
    a.apply(a.remove("a", "x"))
    assert a.value() == frozenset()


def test_flags_enable_wins_and_disable_wins() -> None:
    a, b = _two_replicas(EWFlag, lambda f: f.enable("a"))
    _exchange(a, a.disable("a"), b, b.enable("b"))
    assert a.value() is True
    a, b = _two_replicas(DWFlag, lambda f: f.enable("a"))
    _exchange(a, a.disable("a"), b, b.enable("b"))
    assert a.value() is False
    a.apply(a.enable("a"))
    assert a.value() is True
    assert EWFlag.new().value() is False and DWFlag.new().value() is False


def test_mvregister_keeps_concurrent_writes_and_lww_keeps_the_latest() -> None:
    a, b = _two_replicas(MVRegister)
    _exchange(a, a.write("a", "A", Timestamp(5, 0, "a")), b, b.write("b", "B", Timestamp(5, 0, "b")))
    assert a.value() == ["A", "B"] and a.winner() == "B"
    a, b = _two_replicas(LWWRegister)
    _exchange(a, a.write("a", "A", Timestamp(5, 0, "a")), b, b.write("b", "B", Timestamp(4, 9, "b")))
    assert a.value() == "A"
    _exchange(a, a.write("a", "C", Timestamp(5, 0, "a")), b, b.write("b", "D", Timestamp(5, 0, "b")))
    assert a.value() == "D"  # same time: the greater replica id


def test_lww_distinguishes_true_from_1() -> None:
    ts = Timestamp(1, 0, "a")
    assert LWWRegister(True, ts) != LWWRegister(1, ts)
    assert LWWRegister(True, ts).merge(LWWRegister(1, ts)) == LWWRegister(1, ts).merge(LWWRegister(True, ts))


def test_ormap_fields_are_typed_and_remove_is_observed() -> None:
    ts = Timestamp(1, 0, "a")
    a, b = _two_replicas(ORMap)
    _exchange(
        a,
        a.update("a", "x", MVRegister, lambda r: r.write("a", "v", ts)),
        b,
        b.update("b", "x", AWORSet, lambda s: s.add("b", "e")),
    )
    assert a.value() == {("x", "aws"): frozenset({"e"}), ("x", "mvr"): ["v"]}
    _exchange(a, a.remove("a", "x", AWORSet), b, b.update("b", "x", AWORSet, lambda s: s.add("b", "f")))
    assert a.value() == {("x", "aws"): frozenset({"f"}), ("x", "mvr"): ["v"]}  # the concurrent add survives
    a.apply(a.remove("a", "x"))
    assert a.value() == {}
    with pytest.raises(TypeError):
        a.update("a", "x", GCounter, lambda c: c)


def test_nested_maps_share_one_context() -> None:
    m = ORMap.new()
    m.apply(
        m.update("a", "addr", ORMap, lambda sub: sub.update("a", "city", EWFlag, lambda f: f.enable("a")))
    )
    m.apply(m.update("a", "tags", AWORSet, lambda s: s.add("a", "t")))
    assert m.value() == {("addr", "orm"): {("city", "ewf"): True}, ("tags", "aws"): frozenset({"t"})}
    assert m.context == CausalContext({"a": 2}, frozenset())


def test_equality_is_structural_not_by_value() -> None:
    assert GCounter({"a": 3}) != GCounter({"a": 1, "b": 2})
    assert PNCounter({"a": 1}, {"a": 1}) != PNCounter.new()
    s = AWORSet.new()
    s.apply(s.add("a", "x"))
    t = s.merge(AWORSet.new())
    t.apply(t.remove("a", "x"))
    t.apply(t.add("a", "x"))
    assert s.value() == t.value() and s != t
    assert AWORSet.new() != EWFlag.new()


def test_merging_different_types_is_a_type_error() -> None:
    pairs: list[tuple[Any, Any]] = [
        (GCounter.new(), PNCounter.new()),
        (AWORSet.new(), EWFlag.new()),
        (LWWRegister.new(), GCounter.new()),
    ]
    for x, y in pairs:
        with pytest.raises(TypeError):
            x.merge(y)
        with pytest.raises(TypeError):
            x.apply(y)


# ------------------------------------------------------------------------------ module docstrings

MODULES = ["gcounter", "pncounter", "lww_register", "mv_register", "orset", "ormap", "flags", "ccounter"]


@pytest.mark.parametrize("name", MODULES)
def test_each_module_documents_its_model_and_its_worked_example_runs(name: str) -> None:
    module = importlib.import_module(f"crdt.{name}")
    doc = module.__doc__ or ""
    for section in ("State model", "Merge", "Who wins", "Worked example", "Known anomal"):
        assert section in doc, f"crdt/{name}.py does not say {section!r}"
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_encodings_are_json_safe_without_tuples() -> None:
    assert not is_json_safe({"k": (1, 2)}) and not is_json_safe({1: 2}) and not is_json_safe(1.5)
