"""A caller may wait longer than a socket timeout for a slow run."""

from __future__ import annotations

from pathlib import Path

import pytest

from runnable_k8s import RunnableK8s
from tests.conftest import make_settings
from tests.support.models import SlowModel
from tests.support.workers import WorkerProcess


@pytest.mark.timeout(60)
def test_invoke_waits_for_a_run_longer_than_five_seconds(
    own_redis_url: str, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    settings = make_settings(own_redis_url, time_limit=30.0)
    worker = WorkerProcess(settings, logs_dir, concurrency=2, name="patient")
    workers.append(worker)
    worker.wait_ready()
    remote = RunnableK8s(bound=SlowModel(delay=7.0), settings=settings, timeout=30)
    assert remote.invoke("slow").content == "echo: slow"
