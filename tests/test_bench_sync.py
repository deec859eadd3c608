"""bench/sync.py end to end at its smallest: a real hub on SQLite, a real load-client process, two devices
per user editing one cart. Checked: every push acknowledged and delivered to the other device, nothing
refused; the run's JSON and Markdown. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import sync


def test_every_push_of_a_quick_sqlite_run_is_acked_and_reaches_the_other_device(tmp_path: Path) -> None:
    rc = sync.main(["--quick", "--configs", "synchub-sqlite", "--out", str(tmp_path)])
    assert rc == 0
    (document,) = tmp_path.glob("sync-*-quick.json")
    (markdown,) = tmp_path.glob("sync-*-quick.md")
    (config,) = json.loads(document.read_text())["configs"]
    assert config["name"] == "synchub-sqlite" and config["error"] is None
    assert [step["rate"] for step in config["steps"]] == list(sync.QUICK_RATES)
    for step in config["steps"]:
        assert step["sent"] == step["rate"] * 1  # one-second steps
        assert step["acked"] == step["sent"]
        assert step["delivered"] == step["expected_deliveries"] == step["sent"]
        assert step["errors"] == step["undelivered"] == step["not_broadcast"] == 0
        assert step["complete"]
        assert step["bytes_per_edit"] > 0 and step["server_cpu_s"] > 0
    assert "| synchub-sqlite | 100 |" in markdown.read_text()


def test_unknown_configurations_are_refused() -> None:
    with pytest.raises(SystemExit) as refused:
        sync.parse(["--configs", "synchub-sqlite,etherpad"])
    assert refused.value.code == 2
