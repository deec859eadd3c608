"""The golden CRDT vectors in clients/golden/ are what crdt/ makes today: a change to the cart or review
codec, mutators or join that would break the SDKs' ports shows here first (regenerate the files with
``python clients/golden/generate.py`` and make the ports agree)."""

from __future__ import annotations

import json
from pathlib import Path

from clients.golden import generate
from crdt import codec
from crdt.codec import CodecError

GOLDEN = Path(generate.__file__).resolve().parent


def test_the_committed_golden_files_are_what_the_generator_writes_today():
    files = generate.build()
    assert sorted(files) == ["cart.json", "review.json"]
    for name, text in files.items():
        committed = (GOLDEN / name).read_text("utf-8")
        assert committed == text, f"clients/golden/{name} is stale: run python clients/golden/generate.py"


def test_the_generator_is_a_pure_function_of_its_seeds():
    assert generate.build() == generate.build()


def test_every_trace_replays_in_python_to_its_recorded_bytes():
    """The replay a port does, done with crdt/ itself: the vectors say what they claim."""
    for name in ("cart.json", "review.json"):
        body = json.loads((GOLDEN / name).read_text("utf-8"))
        for trace in body["traces"]:
            kind = trace["type"]
            new = {"cart": generate.Cart.new, "review": generate.Review.new}[kind]
            states = [new() for _ in trace["replicas"]]
            for step in trace["steps"]:
                dev = step["dev"]
                if step["op"] == "mutate":
                    delta = generate.run_call(states[dev], step["call"])
                    assert codec.to_msgpack(delta).hex() == step["delta"], trace["name"]
                else:
                    delta = (
                        codec.from_dict(step["json"])
                        if "json" in step
                        else codec.from_msgpack(bytes.fromhex(step["payload"]))
                    )
                states[dev].apply(delta)
                assert codec.to_msgpack(states[dev]).hex() == step["after"], trace["name"]
            for state, final in zip(states, trace["final"], strict=True):
                assert codec.to_msgpack(state).hex() == final["msgpack"]
                assert codec.from_dict(final["json"]) == state


def test_every_error_payload_is_refused_by_the_codec():
    count = 0
    for name in ("cart.json", "review.json"):
        for case in json.loads((GOLDEN / name).read_text("utf-8"))["errors"]:
            try:
                if "json" in case:
                    codec.from_dict(case["json"])
                else:
                    codec.from_msgpack(bytes.fromhex(case["msgpack"]))
            except CodecError:
                count += 1
            else:
                raise AssertionError(f"{name}: accepted {case}")
    assert count >= 20
