"""A small soak in CI (benchmarks/soak.py runs the 10,000-run one): runs through the dev
autoscaler while workers are SIGKILLed at random; every run is accounted for exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import run_soak

WORKER_RSS_BOUND_MIB = 300
"""A worker process that served a few hundred runs stays below this resident memory (measured:
about 120 MiB, most of it Python, Celery and LangChain imported once)."""


@pytest.mark.timeout(170)
def test_soak_accounts_for_every_run_exactly_once(own_redis_url: str, tmp_path: Path) -> None:
    report = run_soak(
        300,
        redis_url=own_redis_url,
        waves=2,
        max_replicas=3,
        target=10,
        kill_every=3.0,
        log_dir=tmp_path,
        deadline_s=140,
        seed=11,
    )
    summary = "\n".join(report.lines())
    assert report.runs == 300, summary
    assert report.lost == [], summary
    assert report.duplicates == [], summary
    assert report.unexpected == [], summary
    assert report.succeeded + sum(report.failed.values()) == 300, summary
    assert report.kills >= 1, summary
    assert report.peak_replicas == 3, summary
    assert len(report.to_zero_s) == 2, summary
    assert 0 < report.worker_rss_mib < WORKER_RSS_BOUND_MIB, summary
    assert report.peak_rss_mib < WORKER_RSS_BOUND_MIB, summary
