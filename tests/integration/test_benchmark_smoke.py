"""The benchmark's smallest configuration runs end to end: both workers start, every workload
returns correct answers on both sides, and the table and JSON report come out. Correctness
only: no timing is asserted (CI machines are noisy)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.support.benchmarks import run_benchmark


@pytest.mark.timeout(300)
def test_quick_benchmark_runs(redis_url: str, tmp_path: Path) -> None:
    report_path = tmp_path / "bench.json"
    stdout = run_benchmark(
        "benchmarks.bench",
        "--quick",
        "--json",
        str(report_path),
        "--redis-url",
        redis_url,
        "--log-dir",
        str(tmp_path / "logs"),
    )
    assert "| W1 latency p50" in stdout
    assert "plain Celery" in stdout

    report = json.loads(report_path.read_text())
    assert report["configuration"] == "quick"
    sizes = report["sizes"]
    names = [row["figure"] for row in report["figures"]]
    assert [n.split()[0] for n in names[:5]] == ["W1", "W1", "W2", "W3", "W4"]
    for row in report["figures"]:
        for key in ("ours", "baseline", "ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, row
    for side in ("ours", "baseline"):
        samples = report["samples"][side]
        assert len(samples["w1_latencies_ms"]) == sizes["w1_invokes"]
        for key in ("w2_items_per_s", "w3_wall_s", "w4_mb_per_s", "rss_peak_w3_mb"):
            assert len(samples[key]) == sizes["rounds"], key
        assert samples["rss_idle_mb"] > 0
