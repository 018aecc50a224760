"""A reader that resumed a stream after an event id rides out a Redis restart: it gets exactly
the chunks after that id, none missing and none twice."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest

from runnable_k8s import RemoteRun, RunnableK8s
from tests.conftest import make_settings
from tests.reliability.conftest import DurableRedis, read_across_outage
from tests.support.models import SlowModel
from tests.support.workers import WorkerProcess

CHUNKS = 30


@pytest.mark.timeout(180)
def test_a_resumed_reader_continues_across_a_redis_restart_without_gaps_or_repeats(
    durable_redis: DurableRedis, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    settings = make_settings(durable_redis.url, time_limit=60.0, wait_timeout=90.0)
    worker = WorkerProcess(settings, logs_dir, name="resume")
    workers.append(worker)
    worker.wait_ready()
    # 30 chunks, 0.1 s apart: the run is mid-stream while Redis is away.
    remote = RunnableK8s(bound=SlowModel(delay=0.1, chunks=CHUNKS), settings=settings)
    run = remote.submit("hello", stream=True)
    first = list(islice(run.stream(timeout=60, with_ids=True), 4))

    rest = read_across_outage(
        durable_redis,
        lambda: RemoteRun(run.id, settings).stream(timeout=90, after=first[-1][0], with_ids=True),
    )
    whole = list(RemoteRun(run.id, settings).stream(timeout=30, with_ids=True))
    assert first + rest == whole
    # (A chat model's stream ends with an empty chunk.)
    texts = [chunk.content for _, chunk in first + rest if chunk.content]
    assert texts == [f"part{i} " for i in range(CHUNKS)]
    # The outage did reach the run mid-stream.
    assert "Redis unavailable while streaming" in worker.log()
