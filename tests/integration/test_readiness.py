"""Readiness is the consumer's: a worker's ready file exists only while it takes messages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runnable_k8s import RunnableK8s
from runnable_k8s.embedded import EmbeddedRedis, free_port
from tests.conftest import make_settings
from tests.support.models import SlowModel
from tests.support.workers import WorkerProcess


def wait_for(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.timeout(180)
def test_ready_only_while_the_consumer_takes_messages(logs_dir: Path) -> None:
    server = EmbeddedRedis(port=free_port())
    settings = make_settings(server.url, time_limit=60.0)
    worker = WorkerProcess(settings, logs_dir, concurrency=2, name="readiness")
    try:
        # Up (its event loop turns, so liveness is green) but its broker is not there yet.
        wait_for(worker.heartbeat.exists, 60, "the worker never wrote its heartbeat")
        time.sleep(2.0)  # several heartbeats (0.5 s) and connection attempts
        assert worker.poll() is None
        assert not worker.ready_path.exists(), "ready before its broker was reachable"

        server.start()
        worker.wait_ready(60)
        remote = RunnableK8s(bound=SlowModel(delay=0.0), settings=settings)
        assert remote.invoke("first").content == "echo: first"

        # The broker goes away: the consumer lost its connection, so not ready; back when the
        # consumer has subscribed again, and it serves again.
        server.stop()
        wait_for(lambda: not worker.ready_path.exists(), 30, "still ready without a broker")
        assert worker.poll() is None
        server.start()
        worker.wait_ready(60)
        assert remote.invoke("again").content == "echo: again"

        # SIGTERM while a run is held: not ready at once, although the process still runs
        # (it finishes that run before it exits).
        held = RunnableK8s(bound=SlowModel(delay=8.0, chunks=1), settings=settings).submit("held")
        worker.wait_for_log(f"started run={held.id}", timeout=30)
        worker.request_stop()
        wait_for(lambda: not worker.ready_path.exists(), 15, "still ready after SIGTERM")
        assert worker.poll() is None, "exited before its run finished"
        assert held.result(timeout=60).content == "echo: held"
        assert worker.process.wait(30) == 0
        assert not worker.ready_path.exists()
    finally:
        worker.stop()
        server.close()
