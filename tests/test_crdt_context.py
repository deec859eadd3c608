"""The causal context (crdt/context.py) and the hybrid logical clock (crdt/hlc.py).

A context is checked against the set of dots it stands for: merge is union, compaction neither
loses nor invents a dot, ``compare`` is set inclusion, and equal sets are equal (and hash alike)
however they are represented. The clock is checked to be monotonic, to stay ahead of everything it
observed, to clamp timestamps from too far in the future, and to break ties by replica.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt.codec import CodecError
from crdt.context import CausalContext, Order, compare
from crdt.dots import Dot, new_replica_id
from crdt.hlc import HybridClock, Timestamp
from crdt.wire import decode_context, encode_context
from tests.crdt_strategies import suite_settings

REPLICAS = ("a", "b", "c")
DOTS = st.builds(Dot, st.sampled_from(REPLICAS), st.integers(1, 9))
DOT_SETS = st.frozensets(DOTS, max_size=14)


@st.composite
def contexts(draw: st.DrawFn) -> tuple[CausalContext, frozenset[Dot]]:
    """A context and the dots it stands for — built in one of the ways contexts get built."""
    dots = draw(DOT_SETS)
    how = draw(st.sampled_from(["of", "add", "merge", "raw"]))
    if how == "of":
        ctx = CausalContext.of(dots)
    elif how == "add":
        ctx = CausalContext.empty()
        for d in draw(st.permutations(sorted(dots))):
            ctx = ctx.add(d)
    elif how == "merge":
        ctx = CausalContext.empty()
        for d in dots:
            ctx = ctx.merge(CausalContext.of([d]))
    else:  # not compacted: a vector prefix per replica, the rest in the cloud, some redundantly
        vv = {r: draw(st.integers(0, 3)) for r in REPLICAS}
        covered = {Dot(r, n) for r, top in vv.items() for n in range(1, top + 1)}
        redundant = draw(st.sets(st.sampled_from(sorted(covered)))) if covered else set()
        ctx = CausalContext(vv, frozenset(dots) | frozenset(redundant))
        dots = frozenset(dots | covered)
    return ctx, dots


def seen(ctx: CausalContext) -> frozenset[Dot]:
    listed = list(ctx.dots())
    assert len(listed) == len(set(listed)), "dots() listed a dot twice"
    return frozenset(listed)


@suite_settings
@given(contexts())
def test_a_context_stands_for_exactly_its_dots(c: tuple[CausalContext, frozenset[Dot]]) -> None:
    ctx, dots = c
    assert seen(ctx) == dots
    for replica in REPLICAS:
        for counter in range(1, 12):
            assert ctx.contains(Dot(replica, counter)) == (Dot(replica, counter) in dots)


@suite_settings
@given(DOT_SETS)
def test_compaction_never_loses_or_invents_a_dot(dots: frozenset[Dot]) -> None:
    compact = CausalContext({}, dots).compact()
    assert seen(compact) == dots
    # ...and it folds everything contiguous: no cloud dot is next in line after the vector.
    for d in compact.cloud:
        assert d.counter > compact.vv.get(d.replica, 0) + 1
    assert compact.compact() == compact


@suite_settings
@given(contexts(), contexts(), contexts())
def test_merge_is_union_and_a_lattice_join(x: Any, y: Any, z: Any) -> None:
    (a, da), (b, db), (c, dc) = x, y, z
    assert seen(a.merge(b)) == da | db
    assert seen(a.merge(b).merge(c)) == da | db | dc
    assert a.merge(a) == a
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(b).includes(a) and a.merge(b).includes(b)


@suite_settings
@given(contexts(), contexts())
def test_compare_is_set_inclusion(x: Any, y: Any) -> None:
    (a, da), (b, db) = x, y
    expected = {
        (True, True): Order.EQUAL,
        (True, False): Order.BEFORE,
        (False, True): Order.AFTER,
        (False, False): Order.CONCURRENT,
    }[(da <= db, db <= da)]
    assert compare(a, b) == expected
    assert a.includes(b) == (db <= da)


@suite_settings
@given(contexts(), contexts())
def test_equal_dot_sets_are_equal_contexts_with_equal_hashes(x: Any, y: Any) -> None:
    (a, da), (b, db) = x, y
    assert (a == b) == (da == db)
    if a == b:
        assert hash(a) == hash(b)
    assert a == CausalContext.of(da) and hash(a) == hash(CausalContext.of(da))


def test_equal_contexts_hash_alike_however_written() -> None:
    forms = [
        CausalContext({"x": 1}, frozenset()),
        CausalContext({}, frozenset({Dot("x", 1)})),
        CausalContext({"x": 1, "y": 0}, frozenset({Dot("x", 1)})),
    ]
    assert len(set(forms)) == 1
    assert CausalContext({"y": 0}) == CausalContext.empty()


@suite_settings
@given(contexts(), DOTS)
def test_add_and_next_dot(x: Any, dot: Dot) -> None:
    ctx, dots = x
    assert seen(ctx.add(dot)) == dots | {dot}
    for replica in REPLICAS:
        nxt = ctx.next_dot(replica)
        assert not ctx.contains(nxt)
        assert nxt.counter == 1 + max((d.counter for d in dots if d.replica == replica), default=0)


def test_a_gap_stays_a_gap() -> None:
    ctx = CausalContext.empty().add(Dot("x", 1)).add(Dot("x", 3))
    assert ctx.vv == {"x": 1} and ctx.cloud == {Dot("x", 3)}
    assert not ctx.contains(Dot("x", 2))
    assert ctx.merge(CausalContext.of([Dot("x", 2)])) == CausalContext({"x": 3}, frozenset())


def test_a_dot_counts_from_1() -> None:
    with pytest.raises(ValueError):
        Dot("x", 0)
    assert len({new_replica_id() for _ in range(100)}) == 100


# ------------------------------------------------------------------------------ the wire format


@suite_settings
@given(contexts())
def test_the_context_wire_format_round_trips_and_is_json_safe(x: Any) -> None:
    ctx, dots = x
    encoded = encode_context(ctx)
    back = decode_context(json.loads(json.dumps(encoded)))
    assert back == ctx and seen(back) == dots
    assert encode_context(back) == encoded  # one encoding per context


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        {"vv": {}},
        {"vv": {}, "cloud": [], "x": 1},
        {"vv": [], "cloud": []},
        {"vv": {"a": 0}, "cloud": []},
        {"vv": {"a": -1}, "cloud": []},
        {"vv": {"a": True}, "cloud": []},
        {"vv": {"a": 1.0}, "cloud": []},
        {"vv": {"": 1}, "cloud": []},
        {"vv": {}, "cloud": [["a", 0]]},
        {"vv": {}, "cloud": [["a"]]},
        {"vv": {}, "cloud": [[1, 1]]},
        {"vv": {}, "cloud": [("a", 1)]},
        {"vv": {}, "cloud": [["a", 3], ["a", 3]]},
        {"vv": {}, "cloud": {"a": 3}},
    ],
)
def test_a_malformed_context_is_a_codec_error(raw: Any) -> None:
    with pytest.raises(CodecError):
        decode_context(raw)


# --------------------------------------------------------------------------------------- the clock


class FakeTime:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.integers(-50, 100)),  # physical time moves, backwards too
        st.tuples(st.just("now"), st.just(0)),
        st.tuples(st.just("observe"), st.integers(-200, 200_000)),  # a remote, maybe far ahead
    ),
    max_size=40,
)


@suite_settings
@given(EVENTS, st.integers(0, 10_000))
def test_the_clock_never_runs_backwards_and_stays_ahead_of_what_it_saw(events: Any, start: int) -> None:
    time = FakeTime(start)
    clock = HybridClock("me", time, max_drift_ms=1000)
    last: Timestamp | None = None
    floor = (0, 0)  # (wall, logical) of everything observed so far, after clamping
    for kind, n in events:
        if kind == "tick":
            time.ms = max(0, time.ms + n)
        elif kind == "observe":
            remote = Timestamp(max(0, time.ms + n), 3, "other")
            clamped = clock.observe(remote)
            assert clamped.wall_ms <= time.ms + 1000, "a timestamp from the future was not clamped"
            assert clamped.replica == "other" and clamped.logical == remote.logical
            if remote.wall_ms <= time.ms + 1000:
                assert clamped == remote
            floor = max(floor, (clamped.wall_ms, clamped.logical))
        else:
            ts = clock.now()
            assert ts.replica == "me"
            assert last is None or ts > last, "now() went backwards"
            assert (ts.wall_ms, ts.logical) > floor, "now() is not after an observed timestamp"
            assert ts.wall_ms >= time.ms, "now() is behind physical time"
            last = ts


def test_a_clock_far_in_the_future_cannot_drag_the_others_along() -> None:
    clock = HybridClock("me", FakeTime(10_000), max_drift_ms=60_000)
    year_2099 = Timestamp(4_070_908_800_000, 0, "rogue")
    assert clock.observe(year_2099) == Timestamp(70_000, 0, "rogue")
    assert clock.now() == Timestamp(70_000, 1, "me")


def test_the_clock_follows_physical_time_and_counts_within_a_millisecond() -> None:
    time = FakeTime(5)
    clock = HybridClock("a", time)
    assert [clock.now(), clock.now()] == [Timestamp(5, 0, "a"), Timestamp(5, 1, "a")]
    time.ms = 3  # physical time went back: stay put, count on
    assert clock.now() == Timestamp(5, 2, "a")
    time.ms = 9
    assert clock.now() == Timestamp(9, 0, "a")


def test_timestamps_tie_on_time_by_replica() -> None:
    a, b = HybridClock("a", FakeTime(7)).now(), HybridClock("b", FakeTime(7)).now()
    assert (a.wall_ms, a.logical) == (b.wall_ms, b.logical)
    assert a < b and max(a, b).replica == "b"
    assert Timestamp(7, 1, "a") > Timestamp(7, 0, "b") > Timestamp(6, 9, "z")
