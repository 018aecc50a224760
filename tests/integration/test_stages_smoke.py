"""`python -m benchmarks.stages --quick` (W1) and `--stream --quick` (S1's first token) run end to
end against real workers (and a real LangServe server) and find every stamp of every stage: they
fail here when a method the stamped worker wraps moves. Correctness only: no timing is
asserted."""

from __future__ import annotations

import re

import pytest

from benchmarks.stages import STAGES, STREAM_STAGES
from tests.support.benchmarks import run_benchmark


def _check_rows(stdout: str, stages: list[tuple[str, str, str]]) -> None:
    """One row per stage, in order, each with a time, then the sum."""
    lines = stdout.splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| stage ")]
    assert len(rows) == len(stages) + 1, stdout
    for row, (_, _, what) in zip(rows, stages, strict=False):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[0] == what
        assert re.fullmatch(r"-?[0-9.]+ ms", cells[1]), row
    assert rows[-1].startswith("| **sum of the stage medians** | **"), rows[-1]


@pytest.mark.timeout(300)
def test_quick_stages_run(redis_url: str) -> None:
    stdout = run_benchmark(
        "benchmarks.stages", "--quick", "--invokes", "6", "--redis-url", redis_url
    )
    _check_rows(stdout, STAGES)
    assert re.search(r"RunnableK8s p50 [0-9.]+ ms over 6 invokes; plain Celery p50", stdout)


@pytest.mark.timeout(300)
def test_quick_stream_stages_run(redis_url: str) -> None:
    stdout = run_benchmark(
        "benchmarks.stages", "--stream", "--quick", "--tokens", "30", "--redis-url", redis_url
    )
    _check_rows(stdout, STREAM_STAGES)
    assert re.search(
        r"RunnableK8s first token, median [0-9.]+ ms over 4 streams; LangServe [0-9.]+ ms over "
        r"4 in the same run",
        stdout,
    ), stdout
