"""bench/events.py end to end at its smallest (``python -m bench events --quick``): real hub processes on
PostgreSQL and SQLite taking batches of behaviour events over HTTP, then 20,000 stored events and
recommendation reads on PostgreSQL. Checked: every batch answered 200 (no errors column but 0), both
tables printed with their figures, the reads returned lists (the bench stops if most were empty). No
timing is asserted: the figures are the bench's to print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.postgres
def test_a_quick_run_ingests_without_errors_and_reads_lists() -> None:
    admin = os.environ.get("SYNCHUB_TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "events",
            "--quick",
            "--backends",
            "postgres,sqlite",
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
    for backend in ("postgres", "sqlite"):
        row = re.search(rf"^\| {backend} \| ([\d,]+) \| .* \| (\d+) \|$", printed, re.MULTILINE)
        assert row is not None, printed
        assert int(row.group(1).replace(",", "")) > 0 and row.group(2) == "0"
        assert f"- {backend}: " in printed and "events per hub CPU-second" in printed
    # the --quick target (20,000), or past it: the readers' own histories come on top of the ingest's
    stored = re.search(r"## Recommendations at ([\d,]+) stored events \(PostgreSQL\)", printed)
    assert stored is not None and int(stored.group(1).replace(",", "")) >= 20_000, printed
    for case in (
        "| one at a time |",
        "| one at a time, attr.material=organic-cotton |",
        "| 8 connections |",
        "| the store's read alone (in process) |",
    ):
        assert case in printed
    assert "- read p99 one at a time:" in printed
