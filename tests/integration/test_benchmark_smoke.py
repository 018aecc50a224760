"""The benchmark's smallest configuration runs end to end: both workers and the LangServe server
start, every workload returns correct answers on every side that runs it, Redis commands are
counted, and the tables and JSON report come out. Correctness only: no timing is asserted (CI
machines are noisy)."""

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
    assert "| plain Celery | LangServe | in-process | RunnableK8s |" in stdout

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
        assert math.isfinite(samples["commands_per_invoke"]) and samples["commands_per_invoke"] > 0

    # Every row of the table, each with met / not met, but the optional S3.
    targets = report["targets"]
    assert [t["figure"].split(":")[0] for t in targets[:3]] == ["W1", "S1", "S2"]
    assert [t["met"] is None for t in targets] == [False] * 5 + [True]
    for row in targets[:5]:
        assert all(math.isfinite(v) and v > 0 for v in row["values"].values()), row
    for side in ("ours", "langserve", "inprocess"):
        samples = report["samples"][side]
        assert len(samples["w1_latencies_ms"]) == sizes["w1_invokes"], side
        for key in ("s1_tokens_per_s", "s1_first_token_ms", "s2_chunks_per_s"):
            assert len(samples[key]) == sizes["rounds"], (side, key)
    ours = report["samples"]["ours"]
    # A streamed token costs a fraction of what a whole run does.
    assert 0 < ours["commands_per_token"] < ours["commands_per_invoke"]
    # Tokens share stream entries when they come faster than entries leave: at most one XADD
    # each, and some (the first entry is a script's).
    assert 0 < ours["token_commands"]["xadd"] <= 1.0
