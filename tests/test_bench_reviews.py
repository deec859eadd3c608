"""bench/reviews.py end to end at its smallest (``python -m bench reviews --quick``): real hub processes on
PostgreSQL and SQLite, real HTTP posts of reviews on one product and a WebSocket subscriber on its channel,
then 2,000 reviews seeded and listed. Checked: every post published and its event delivered, the product's
aggregate exact (the printed "exact: yes"), every listing case answered with a page; the figures printed.
No timing is asserted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import reviews
from bench.reviews_posts import post_text, word_of

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_a_quick_run_publishes_every_post_exactly_and_lists_every_case(tmp_path: Path) -> None:
    admin = os.environ.get("SYNCHUB_TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "reviews",
            "--quick",
            "--out",
            str(tmp_path),
            "--postgres-admin-url",
            admin,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    assert "exact: yes" in printed and "exact: no" not in printed
    assert "- postgres: posts answered" in printed and "- sqlite: posts answered" in printed
    for row in ("| postgres | 25/s |", "| postgres | max |", "| sqlite | 50/s |", "| sqlite | max |"):
        assert row in printed
    # A posts row: answered/s, then published / held, errors, and the figures after them.
    figures = re.search(
        r"\| postgres \| 25/s \| 8 \| ([\d,]+) \| ([\d,]+) / 0 \| 0 \| ([\d.]+) / ([\d.]+) \|", printed
    )
    assert figures is not None, printed
    assert "## Listing one product's 2,000 reviews — postgres" in printed
    assert "## Listing one product's 2,000 reviews — sqlite" in printed
    assert "| newest, after 500 (cursor) | 20 |" in printed

    (document,) = tmp_path.glob("reviews-*-quick.json")
    result = json.loads(document.read_text())
    assert [r["config"] for r in result["posts"]] == ["postgres", "sqlite"]
    for run in result["posts"]:
        assert run["error"] is None and run["exact"] and run["recount"] == {}
        published = sum(step["published"] for step in run["steps"])
        assert run["statuses"] == {"published": run["expected"]["count"]} and published > 0
        assert run["stored"]["count"] == run["expected"]["count"] == run["live"]["count"]
        assert [s["label"] for s in run["steps"]] == ["25/s", "50/s", "max"]
        for step in run["steps"]:
            assert step["errors"] == step["held"] == 0 and step["acked"] == step["sent"]
            assert step["events_delivered"] == step["events_expected"] == step["published"]
            assert step["server_cpu_s"] > 0 and step["posts_per_server_cpu_s"] > 0
            assert 0 < step["post_p50_ms"] <= step["post_p99_ms"]
            assert (step["db_cpu_s"] is None) == (run["config"] == "sqlite")
    for listing in result["listings"]:
        assert listing["error"] is None and listing["reviews"] == 2_000 and listing["deep"] == [500]
        assert len(listing["cases"]) == 10
        for case in listing["cases"]:
            assert len(case["latencies_ms"]) == 20 and case["p50_ms"] > 0
            assert case["items"] >= 1 and (case["items"] == 20 or "lavender" in case["label"])


def test_post_texts_are_unique_and_free_of_digits() -> None:
    import random

    rng = random.Random(1)
    texts = {post_text(rng, word_of(n, "rv")) for n in range(5_000)}
    assert len(texts) == 5_000
    assert not any(ch.isdigit() for text in texts for ch in text)
    assert word_of(0) == "a" and word_of(25) == "z" and word_of(26) == "ba"


def test_unknown_configurations_are_refused() -> None:
    with pytest.raises(SystemExit) as refused:
        reviews.parse(["--configs", "postgres,mysql"])
    assert refused.value.code == 2
