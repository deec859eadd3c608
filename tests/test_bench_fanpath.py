"""bench/fanpath.py: the Python cost per delivery of a real fan-out over null transports."""

from __future__ import annotations

import pytest

from bench import fanpath


def test_it_fans_out_every_event_to_every_connection_and_prints_the_cost_per_delivery(capsys):
    assert fanpath.main(["--connections", "300", "--events", "3", "--rounds", "2"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[0] == "300"
    dispatch, flush, total = map(float, cells[1:])
    assert dispatch > 0 and flush > 0
    assert total == pytest.approx(dispatch + flush, abs=0.011)


def test_sizes_out_of_bounds_are_refused():
    with pytest.raises(SystemExit):
        fanpath.main(["--connections", "0"])
