"""`python -m benchmarks.stages --quick` runs end to end against real workers and finds every
stamp of every stage: it fails here when a method the stamped worker wraps moves. Correctness
only: no timing is asserted."""

from __future__ import annotations

import re

import pytest

from benchmarks.stages import STAGES
from tests.support.benchmarks import run_benchmark


@pytest.mark.timeout(300)
def test_quick_stages_run(redis_url: str) -> None:
    stdout = run_benchmark(
        "benchmarks.stages", "--quick", "--invokes", "6", "--redis-url", redis_url
    )
    lines = stdout.splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| stage ")]
    assert len(rows) == len(STAGES) + 1, stdout
    for row, (_, _, what) in zip(rows, STAGES, strict=False):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[0] == what
        assert re.fullmatch(r"-?[0-9.]+ ms", cells[1]), row
    assert re.search(r"RunnableK8s p50 [0-9.]+ ms over 6 invokes; plain Celery p50", stdout)
