"""``python -m bench client`` runs end to end (small sizes): one SDK client takes replayed backlogs over
two transports, every version once and in order. The figures themselves are the bench's to print."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_the_client_bench_consumes_every_event_once_in_order() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "client",
            "--events",
            "400",
            "--backlog",
            "200",
            "--transports",
            "ws-msgpack,poll",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {
        line.split()[0]: line.split()
        for line in result.stdout.splitlines()
        if line.startswith(("ws-", "poll"))
    }
    assert set(rows) == {"ws-msgpack", "poll"}
    assert all(row[1] == "400" and row[-1] == "True" for row in rows.values()), result.stdout
