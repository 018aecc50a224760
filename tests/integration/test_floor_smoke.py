"""`python -m benchmarks.floor --quick` runs end to end against real workers and prints its
table, every row with a figure. Correctness only: no timing is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_quick_floor_runs(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.floor", "--quick", "--rounds", "1",
         "--redis-url", redis_url],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    rows = [line for line in done.stdout.splitlines() if line.startswith("| W")]
    assert [row.split()[1] for row in rows] == ["W1", "W1", "W1", "W1", "W4:", "W3:", "W3:"]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert re.fullmatch(r"[0-9.]+ (ms|MB/s|s)", cells[1]), row  # the floor itself
        assert cells[-1] in ("yes", "no"), row
