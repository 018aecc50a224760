"""`python -m benchmarks.floor --quick` runs end to end against real workers and prints its
table, every row with a figure. Correctness only: no timing is asserted."""

from __future__ import annotations

import re

import pytest

from tests.support.benchmarks import run_benchmark


@pytest.mark.timeout(300)
def test_quick_floor_runs(redis_url: str) -> None:
    stdout = run_benchmark("benchmarks.floor", "--quick", "--rounds", "1", "--redis-url", redis_url)
    rows = [line for line in stdout.splitlines() if line.startswith("| W")]
    assert [row.split()[1] for row in rows] == ["W1", "W1", "W1", "W1", "W4:", "W3:", "W3:"]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert re.fullmatch(r"[0-9.]+ (ms|MB/s|s)", cells[1]), row  # the floor itself
        verdicts = cells[-1].split("; ")
        # W1 against both of its targets (issue 6's 0.6x, issue 14's 0.8x), the others one.
        assert len(verdicts) == (2 if row.startswith("| W1") else 1), row
        assert set(verdicts) <= {"yes", "no"}, row
