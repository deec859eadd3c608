"""The benchmark suite's sections (bench/crossnode.py, bench/storm.py, bench/idle.py), end to end through
``python -m bench suite``'s main at tiny sizes: real hub processes, real PostgreSQL and Redis, real
load-generator processes. Checked: the structure of the run's JSON and Markdown, and the invariants that
must hold whatever the machine — every event delivered, none missed or duplicated in the storm."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench import suite
from bench._hub import adjust_at, admin_headers, hub_process, stock_product
from bench.loadgen import LoadGen, Sequences, Target, _Seen

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def run_suite(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """``python -m bench suite`` with ``args``; (exit code, the JSON document, the Markdown)."""
    rc = suite.main([*args, "--out", str(tmp_path), "--connect-seconds", "30", "--drain-seconds", "15"])
    (document,) = tmp_path.glob("suite-*.json")
    (markdown,) = tmp_path.glob("suite-*.md")
    return rc, json.loads(document.read_text()), markdown.read_text()


@pytest.mark.slow
def test_the_storm_resumes_every_client_with_nothing_missed_or_duplicated(tmp_path: Path) -> None:
    rc, document, markdown = run_suite(
        tmp_path,
        "--sections",
        "storm",
        "--storm-clients",
        "50",
        "--storm-rate",
        "20",
        "--storm-before",
        "1",
        "--storm-after",
        "1",
    )
    assert rc == 0
    assert document["meta"]["sections"] == ["storm"]
    assert document["runs"] == [] and document["crossnode"] is None and document["idle"] == []
    storm = document["storm"]
    assert storm["error"] is None and storm["ok"] is True
    assert storm["clients"] == storm["connected"] == storm["dropped"] == 50
    assert storm["published"] > storm["published_before_drop"] >= 2  # publishing went on after the drop
    assert storm["expected"] == 50 * storm["published"] == storm["received"]
    assert storm["missed"] == storm["duplicated"] == storm["unexpected"] == 0
    assert storm["clients_missing"] == storm["clients_with_duplicates"] == 0
    assert 0 < storm["resubscribed_s"] <= storm["caught_up_s"] < 15
    assert "## Reconnect storm" in markdown and "| ok |" in markdown


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_cross_node_times_both_paths_and_the_in_process_baseline_on_the_same_load(tmp_path: Path) -> None:
    rc, document, markdown = run_suite(
        tmp_path,
        "--sections",
        "crossnode",
        "--crossnode-clients",
        "20",
        "--crossnode-rate",
        "20",
        "--crossnode-seconds",
        "1",
    )
    assert rc == 0
    cross = document["crossnode"]
    assert cross["error"] is None
    assert cross["clients_per_node"] == 20 and cross["published"] == cross["published_in_process"] == 20
    paths = {p["path"]: p for p in cross["paths"]}
    assert list(paths) == ["same node (A)", "cross-node (A → B)", "one node, in-process broker"]
    for p in paths.values():
        assert p["expected"] == p["received"] == 20 * 20 and p["delivered_fraction"] == 1.0
        assert 0 < p["p50_ms"] <= p["p99_ms"] <= p["max_ms"]
        assert p["mean_arrival_ms"] is not None and p["mean_arrival_ms"] > 0
    same, cross_path, alone = paths.values()
    assert cross["hop_p99_ms"] == pytest.approx(cross_path["p99_ms"] - same["p99_ms"])
    assert cross["redis_p50_ms"] == pytest.approx(cross_path["p50_ms"] - alone["p50_ms"])
    assert cross["target_met"] == (cross["hop_p99_ms"] <= 5.0)
    assert "## Cross-node latency" in markdown and "Cross-node − same node" in markdown
    assert HAS_MATPLOTLIB is bool(list(tmp_path.glob("*-crossnode.png")))


@pytest.mark.slow
def test_idle_reads_each_servers_memory_at_each_count(tmp_path: Path) -> None:
    rc, document, markdown = run_suite(
        tmp_path,
        "--sections",
        "idle",
        "--idle-counts",
        "100,50",
        "--idle-servers",
        "synchub-ws,synchub-sse,aiohttp",
        "--idle-settle",
        "0.2",
    )
    assert rc == 0
    runs = {run["server"]: run for run in document["idle"]}
    assert list(runs) == ["synchub-ws", "synchub-sse", "aiohttp"]
    assert [runs[name]["kind"] for name in runs] == ["ws", "sse", "ws"]
    for run in runs.values():
        assert run["error"] is None and run["rss_0_kb"] > 0
        assert [level["connections"] for level in run["levels"]] == [50, 100]
        for level in run["levels"]:
            assert level["rss_kb"] > run["rss_0_kb"]
            assert level["kb_per_connection"] == pytest.approx(
                (level["rss_kb"] - run["rss_0_kb"]) / level["connections"]
            )
    assert "## Idle capacity" in markdown
    assert HAS_MATPLOTLIB is bool(list(tmp_path.glob("*-idle.png")))


def test_unknown_sections_and_idle_servers_are_refused(tmp_path: Path) -> None:
    for args in (["--sections", "storm,nope"], ["--sections", "idle", "--idle-servers", "synchub-mix"]):
        with pytest.raises(SystemExit) as exc:
            suite.main([*args, "--out", str(tmp_path)])
        assert exc.value.code == 2
    assert not list(tmp_path.iterdir())


# -- the storm's check itself: it sees what a wrong resume does ---------------------------------------


def test_seen_counts_missed_duplicated_and_unexpected_numbers() -> None:
    seen = _Seen()
    for seq in (5, 3, 4, 4, 9, 3, 3):
        seen.add(seq)
    # published 3..8: 6 and 7 and 8 never came, 4 came twice and 3 three times, 9 was never published
    assert seen.check(frozenset(range(3, 9))) == (3, 3, 1)
    assert _Seen().check(frozenset({1, 2})) == (2, 0, 0)
    summary = Sequences(clients=3, missed={0: 2, 4: 1}, duplicated={0: 3}, unexpected={0: 3}).summary()
    assert (
        summary["missed"] == 4 and summary["clients_missing"] == 1 and summary["max_missed_per_client"] == 4
    )
    assert summary["duplicated"] == summary["clients_with_duplicates"] == 0


@pytest.mark.slow
async def test_a_resume_without_the_position_misses_and_one_from_the_start_duplicates(tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(32)
    admin = admin_headers(secret)
    async with (
        hub_process(str(tmp_path / "hub.sqlite3"), secret, "--region", "eu") as (base, _),
        aiohttp.ClientSession() as session,
        LoadGen(workers=1) as gen,
    ):
        url = await stock_product(session, base, admin)
        right = dataclasses.replace(
            Target.synchub_ws("127.0.0.1", int(base.rsplit(":", 1)[1])), sequence=b"version"
        )
        await gen.connect(right, 10)
        versions = await adjust_at(session, url, admin, 50.0, count=3)
        assert await gen.wait_received(30, timeout=10) == 30
        (position,) = set(await gen.positions())
        assert position is not None
        epoch = position.split(":")[0]

        # Resubscribing without "since": what was published while away is missed.
        await gen.disconnect(abort=True)
        await adjust_at(session, url, admin, 50.0, count=2, versions=versions)
        await gen.connect(dataclasses.replace(right, resume_send=None), 10, resume=True)
        await adjust_at(session, url, admin, 50.0, count=1, versions=versions)
        await gen.wait_received(40, timeout=10)
        await gen.wait_idle(0.2, timeout=2)
        missing = await gen.sequences(versions)
        assert missing.summary() == {
            "clients": 10,
            "missed": 20,
            "clients_missing": 10,
            "max_missed_per_client": 2,
            "duplicated": 0,
            "clients_with_duplicates": 0,
            "max_duplicated_per_client": 0,
            "unexpected": 0,
        }

        # Resuming from the start of the stream: everything already received comes again.
        await gen.disconnect(abort=True)
        from_start = b'{"type":"subscribe","channel":"inventory:eu","since":"' + epoch.encode() + b':0"}'
        await gen.connect(dataclasses.replace(right, resume_send=from_start), 10, resume=True)
        await gen.wait_received(40 + 60, timeout=10)
        await gen.wait_idle(0.2, timeout=2)
        doubled = (await gen.sequences(versions)).summary()
        assert doubled["duplicated"] == 10 * 4 and doubled["clients_with_duplicates"] == 10
        assert doubled["missed"] == 0  # replayed too: the two missed before are missing no more
        await gen.disconnect()
