"""The worker's garbage-collector tuning (`runnable_k8s/worker/memory.py`), seen from inside a
real worker process through a runnable that reports it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runnable_k8s import RunnableK8s
from tests.conftest import make_settings
from tests.support.models import GcProbe
from tests.support.workers import WorkerProcess


@pytest.fixture
def probe_worker(
    redis_url: str, logs_dir: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[RunnableK8s[object, dict[str, int]], WorkerProcess]]:
    settings = make_settings(redis_url)
    process = WorkerProcess(settings, logs_dir, concurrency=2, env=request.param, name="gc")
    try:
        process.wait_ready()
        yield RunnableK8s(bound=GcProbe(), settings=settings), process
    finally:
        process.stop()


@pytest.mark.parametrize("probe_worker", [{}], indirect=True)
def test_worker_freezes_start_up_objects_and_raises_the_threshold(
    probe_worker: tuple[RunnableK8s[object, dict[str, int]], WorkerProcess],
) -> None:
    remote, _ = probe_worker
    seen = remote.invoke("x")
    assert seen["threshold"] == 10_000  # the documented default
    # LangChain, pydantic and Celery alone leave tens of thousands of objects behind.
    assert seen["frozen"] > 20_000


@pytest.mark.parametrize("probe_worker", [{"RUNNABLE_K8S_GC_THRESHOLD": "0"}], indirect=True)
def test_zero_keeps_pythons_threshold(
    probe_worker: tuple[RunnableK8s[object, dict[str, int]], WorkerProcess],
) -> None:
    remote, _ = probe_worker
    seen = remote.invoke("x")
    assert seen["threshold"] == 700  # CPython 3.11's own
    assert seen["frozen"] > 20_000
