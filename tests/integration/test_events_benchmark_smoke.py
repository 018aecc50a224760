"""`python -m benchmarks.events` runs end to end against real workers, and the worker with task
events on publishes more than the one with them off. Counts only: no timing is asserted."""

from __future__ import annotations

import pytest

from tests.support.benchmarks import run_benchmark


@pytest.mark.timeout(300)
def test_events_benchmark_counts_the_publishes_of_task_events() -> None:
    stdout = run_benchmark("benchmarks.events", "--runs", "10", "--rounds", "2")
    rows = {
        cells[0]: cells[1:]
        for line in stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| per run")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    assert set(rows) == {
        "Redis commands",
        "of which PUBLISH",
        "bytes sent to Redis",
        "W1 latency p50, ms",
    }
    off, on, _ = (float(cell.replace(",", "")) for cell in rows["of which PUBLISH"])
    # Three task events per run, some published together: at least one PUBLISH more per run.
    assert on - off >= 1, rows
