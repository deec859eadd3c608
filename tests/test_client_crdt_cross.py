"""Cross-language merges: hypothesis draws worlds of cart and review replicas (mutators, deltas and
whole states delivered late, twice, out of order), crdt/ runs them, and the TypeScript port
(clients/js) replays each one in a Node process: every delta, every merged state (as MessagePack
bytes) and every view (value, conflicts, rejected edits, status) must be the same."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.golden import generate
from tests.crdt_profiles import PROFILE
from tests.js_helpers import js_build, node

EXAMPLES = 150 if PROFILE == "ci" else 500


class Replayer:
    def __init__(self) -> None:
        script = js_build() / "test" / "cross-runner.js"
        self.proc = subprocess.Popen(
            [node(), str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )

    def replay(self, trace: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(trace, ensure_ascii=False) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the Node replayer exited"
        return dict(json.loads(line))

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(30)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def replayer() -> Iterator[Replayer]:
    r = Replayer()
    yield r
    r.close()


REPLICAS = {
    "cart": [
        ["0123456789abcdef", "a9f3c2e1d0b47865", generate.HUB],
        ["phone", "📱tab", generate.HUB],
        ["x", "y"],
    ],
    "review": [["phone", "fedcba9876543210", generate.HUB]],
}


def world(data: st.DataObject, kind: str) -> dict:
    replicas = data.draw(st.sampled_from(REPLICAS[kind]))
    steps = data.draw(st.integers(1, 40))
    w = generate.run_world(kind, replicas, lambda n: data.draw(st.integers(0, n - 1)), steps)
    return w.trace(f"hypothesis {kind}")


@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_typescript_carts_merge_to_the_same_bytes_and_values_as_python(replayer, data):
    trace = world(data, "cart")
    answer = replayer.replay(trace)
    assert answer == {"ok": True}, answer.get("error")


@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_typescript_reviews_merge_to_the_same_bytes_and_values_as_python(replayer, data):
    trace = world(data, "review")
    answer = replayer.replay(trace)
    assert answer == {"ok": True}, answer.get("error")
