"""Hypothesis strategies for the CRDT law suite: one *model* per type, and *worlds* of replicas.

A model names a CRDT class, the operations a replica can perform on it (each with its sequential
specification: what the value must read right after the operation, on the replica that made it) and
how to observe a state's value. A world is what a few replicas reach by running random operations
and exchanging deltas and states in any order, with duplicates — so every state the laws are checked
on is a reachable one, and states drawn from one world are mutually consistent (unlike two states
made up independently, which could give one dot two different meanings).

Every delta made in a world and every state handed to a law goes through both codec forms first
(:func:`roundtrip`), and must come back equal.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

from crdt import codec
from crdt.causal import Causal
from crdt.ccounter import CCounter
from crdt.flags import DWFlag, EWFlag
from crdt.gcounter import GCounter
from crdt.hlc import HybridClock, Timestamp
from crdt.lww_register import LWWRegister
from crdt.mv_register import MVRegister
from crdt.ormap import ORMap
from crdt.orset import AWORSet
from crdt.pncounter import PNCounter
from crdt.wire import canonical
from tests.crdt_profiles import PROFILE  # (importing it registers and loads the Hypothesis profile)

# The suites here run ~100 properties; the shared "ci" profile is sized for a few stateful tests.
# Under "ci" they take this many examples each (the whole suite in well under a minute on 2 cores);
# under any other profile ("deep"), what the profile says.
CI_EXAMPLES = 50
suite_settings = settings(max_examples=CI_EXAMPLES) if PROFILE == "ci" else settings()

REPLICAS = ("a", "b", "c")
MAX_STEPS = 14
MAP_DEPTH = 1  # an ORMap may hold an ORMap, which holds the other kinds

# ------------------------------------------------------------------------------------------- codec


def is_json_safe(x: Any) -> bool:
    """Only None, bool, int, str, list and dict with string keys — no tuples, bytes or floats."""
    if x is None or isinstance(x, (bool, int, str)):
        return True
    if isinstance(x, list):
        return all(is_json_safe(item) for item in x)
    if isinstance(x, dict):
        return all(isinstance(k, str) and is_json_safe(v) for k, v in x.items())
    return False


def canonical_encoding(x: Any) -> str:
    return json.dumps(codec.to_dict(x), sort_keys=True)


_formats = itertools.cycle(["dict", "msgpack"])


def through_the_wire(value: Any) -> Any:
    """What the other end receives: alternately through the JSON-safe dict and MessagePack, checked to
    decode equal to what was sent."""
    if next(_formats) == "dict":
        out = codec.from_dict(codec.to_dict(value))
    else:
        out = codec.from_msgpack(codec.to_msgpack(value))
    assert type(out) is type(value) and out == value
    return out


def roundtrip(x: Any) -> Any:
    """``x`` through JSON-safe dict → JSON text → dict → MessagePack → back; checked to be equal."""
    as_dict = codec.to_dict(x)
    assert is_json_safe(as_dict), as_dict
    via_json = codec.from_dict(json.loads(json.dumps(as_dict, allow_nan=False)))
    assert type(via_json) is type(x) and via_json == x, (x, via_json)
    via_msgpack = codec.from_msgpack(codec.to_msgpack(via_json))
    assert type(via_msgpack) is type(x) and via_msgpack == x, (x, via_msgpack)
    assert canonical_encoding(via_msgpack) == canonical_encoding(x)
    return via_msgpack


# ------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class Op:
    """An operation: ``run(state, replica, ts)`` returns its delta; ``expect(state, replica, ts)``
    is what ``observe`` must read on ``state ⊔ delta`` (the sequential specification)."""

    label: str
    run: Callable[[Any, str, Timestamp], Any]
    expect: Callable[[Any, str, Timestamp], Any]

    def __repr__(self) -> str:
        return self.label


@dataclass(frozen=True)
class Model:
    name: str
    cls: type[Any]
    ops: Callable[[int], st.SearchStrategy[Op]]
    observe: Callable[[Any], Any] = field(default=lambda s: s.value())

    def __repr__(self) -> str:
        return self.name

    @property
    def causal(self) -> bool:
        return issubclass(self.cls, Causal)


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from(["", "x", "y", "é"]),
    st.lists(st.integers(0, 1), max_size=2),
    st.dictionaries(st.sampled_from(["k", "l"]), st.booleans(), max_size=2),
)
ELEMENTS = st.sampled_from(["x", "y", "z", 1, 2])
AMOUNTS = st.integers(1, 4)
NAMES = st.sampled_from(["p", "q"])


def _op(
    label: str, run: Callable[[Any, str, Timestamp], Any], expect: Callable[[Any, str, Timestamp], Any]
) -> Op:
    return Op(label, run, expect)


@functools.cache
def gcounter_ops(depth: int) -> st.SearchStrategy[Op]:
    return AMOUNTS.map(
        lambda n: _op(f"inc({n})", lambda s, r, ts: s.inc(r, n), lambda s, r, ts: s.value() + n)
    )


@functools.cache
def pncounter_ops(depth: int) -> st.SearchStrategy[Op]:
    inc = AMOUNTS.map(
        lambda n: _op(f"inc({n})", lambda s, r, ts: s.inc(r, n), lambda s, r, ts: s.value() + n)
    )
    dec = AMOUNTS.map(
        lambda n: _op(f"dec({n})", lambda s, r, ts: s.dec(r, n), lambda s, r, ts: s.value() - n)
    )
    return inc | dec


@functools.cache
def ccounter_ops(depth: int) -> st.SearchStrategy[Op]:
    reset = st.just(_op("reset", lambda s, r, ts: s.reset(r), lambda s, r, ts: 0))
    return pncounter_ops(depth) | reset


def _lww_expect(value: Any) -> Callable[[Any, str, Timestamp], Any]:
    def expect(s: LWWRegister, r: str, ts: Timestamp) -> Any:
        if s.timestamp is None or (ts, canonical(value)) > (s.timestamp, canonical(s.value())):
            return value
        return s.value()  # a write with an older timestamp loses on the spot

    return expect


@functools.cache
def lww_ops(depth: int) -> st.SearchStrategy[Op]:
    return VALUES.map(lambda v: _op(f"write({v!r})", lambda s, r, ts: s.write(r, v, ts), _lww_expect(v)))


@functools.cache
def mvr_ops(depth: int) -> st.SearchStrategy[Op]:
    write = VALUES.map(
        lambda v: _op(f"write({v!r})", lambda s, r, ts: s.write(r, v, ts), lambda s, r, ts: [v])
    )
    return write | st.just(_op("clear", lambda s, r, ts: s.clear(r), lambda s, r, ts: []))


@functools.cache
def aws_ops(depth: int) -> st.SearchStrategy[Op]:
    add = ELEMENTS.map(
        lambda e: _op(f"add({e!r})", lambda s, r, ts: s.add(r, e), lambda s, r, ts: s.value() | {e})
    )
    remove = ELEMENTS.map(
        lambda e: _op(f"remove({e!r})", lambda s, r, ts: s.remove(r, e), lambda s, r, ts: s.value() - {e})
    )
    clear = st.just(_op("clear", lambda s, r, ts: s.clear(r), lambda s, r, ts: frozenset()))
    return st.one_of(add, add, remove, clear)


@functools.cache
def flag_ops(depth: int) -> st.SearchStrategy[Op]:
    return st.sampled_from(
        [
            _op("enable", lambda s, r, ts: s.enable(r), lambda s, r, ts: True),
            _op("disable", lambda s, r, ts: s.disable(r), lambda s, r, ts: False),
        ]
    )


def observe_map(m: ORMap) -> dict[tuple[str, str], Any]:
    """The map's value with every field that reads like an empty one left out (so that a field that
    is absent and a field that is present but reads empty look the same, as they should)."""
    out: dict[tuple[str, str], Any] = {}
    for name, tag in m.fields():
        kind = NESTED[tag]
        seen = kind.observe(m.get(name, kind.cls))
        if seen != kind.observe(kind.cls.new()):
            out[(name, tag)] = seen
    return out


def _map_update(name: str, kind: Model, op: Op) -> Op:
    tag = kind.cls.TYPE_TAG

    def run(m: ORMap, r: str, ts: Timestamp) -> ORMap:
        return m.update(r, name, kind.cls, lambda view: op.run(view, r, ts))

    def expect(m: ORMap, r: str, ts: Timestamp) -> Any:
        out = observe_map(m)
        out.pop((name, tag), None)
        seen = op.expect(m.get(name, kind.cls), r, ts)
        if seen != kind.observe(kind.cls.new()):
            out[(name, tag)] = seen
        return out

    return Op(f"update({name!r}, {kind.name}, {op.label})", run, expect)


def _map_remove(name: str, kind: Model | None) -> Op:
    def run(m: ORMap, r: str, ts: Timestamp) -> ORMap:
        return m.remove(r, name, None if kind is None else kind.cls)

    def expect(m: ORMap, r: str, ts: Timestamp) -> Any:
        return {
            f: v for f, v in observe_map(m).items() if f[0] != name or (kind and f[1] != kind.cls.TYPE_TAG)
        }

    return Op(f"remove({name!r}, {kind})", run, expect)


@functools.cache
def ormap_ops(depth: int) -> st.SearchStrategy[Op]:
    kinds = [m for m in NESTED.values() if m.cls is not ORMap or depth > 0]

    @st.composite
    def update(draw: st.DrawFn) -> Op:
        name, kind = draw(NAMES), draw(st.sampled_from(kinds))
        return _map_update(name, kind, draw(kind.ops(depth - 1)))

    remove = st.tuples(NAMES, st.none() | st.sampled_from(kinds)).map(lambda nk: _map_remove(*nk))
    return st.one_of(update(), update(), update(), remove)


GCOUNTER = Model("GCounter", GCounter, gcounter_ops)
MODELS = [
    GCOUNTER,
    Model("PNCounter", PNCounter, pncounter_ops),
    Model("LWWRegister", LWWRegister, lww_ops),
    Model("MVRegister", MVRegister, mvr_ops),
    Model("AWORSet", AWORSet, aws_ops),
    Model("EWFlag", EWFlag, flag_ops),
    Model("DWFlag", DWFlag, flag_ops),
    Model("CCounter", CCounter, ccounter_ops),
    Model("ORMap", ORMap, ormap_ops, observe_map),
]
BY_NAME = {m.name: m for m in MODELS}
NESTED = {
    m.cls.TYPE_TAG: m for m in MODELS if m.cls in (MVRegister, AWORSet, EWFlag, DWFlag, CCounter, ORMap)
}

# ------------------------------------------------------------------------------------------ worlds


@dataclass
class World:
    """Replicas that have run operations and exchanged deltas and states; ``log`` holds every delta."""

    model: Model
    states: dict[str, Any]
    clocks: dict[str, HybridClock]
    log: list[Any]
    history: list[str]

    def __repr__(self) -> str:
        return f"World({self.model.name}: {'; '.join(self.history) or 'nothing happened'})"


ACTIONS = st.sampled_from(["op", "op", "op", "delta", "state"])
ANY_REPLICA = st.sampled_from(REPLICAS)
TICKS = st.integers(0, 2)


@st.composite
def worlds(draw: st.DrawFn, model: Model, max_steps: int = MAX_STEPS) -> World:
    now = [draw(st.integers(0, 3), label="start")]
    skew = {r: draw(st.integers(-2, 2), label=f"skew {r}") for r in REPLICAS}

    def physical(r: str) -> Callable[[], int]:
        return lambda: max(0, now[0] + skew[r])

    clocks = {r: HybridClock(r, physical(r)) for r in REPLICAS}
    states = {r: model.cls.new() for r in REPLICAS}
    log: list[Any] = []
    history: list[str] = []
    ops = model.ops(MAP_DEPTH)
    for _ in range(draw(st.integers(0, max_steps), label="steps")):
        action = draw(ACTIONS)
        if action == "op":
            r = draw(ANY_REPLICA)
            op = draw(ops)
            now[0] += draw(TICKS)
            delta = roundtrip(op.run(states[r], r, clocks[r].now()))
            states[r].apply(delta)
            log.append(delta)
            history.append(f"{r}: {op.label} -> δ{len(log) - 1}")
        elif action == "delta" and log:
            dst, i = draw(ANY_REPLICA), draw(st.integers(0, len(log) - 1))
            states[dst].apply(log[i])
            history.append(f"δ{i} -> {dst}")
        elif action == "state":
            src, dst = draw(ANY_REPLICA), draw(ANY_REPLICA)
            states[dst].apply(roundtrip(states[src]))
            clocks[dst].observe(clocks[src].last)
            history.append(f"{src} => {dst}")
    return World(model, states, clocks, log, history)
