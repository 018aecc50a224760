"""The process's one stream reader across a Redis restart: every wait it serves (asyncio and
threads alike) sees its stream whole, nothing skipped or repeated, and the reader serves new
waits afterwards."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from runnable_k8s import RunnableK8s
from tests.conftest import make_settings
from tests.reliability.conftest import DurableRedis, read_across_outage, wait_until
from tests.support.models import SlowModel
from tests.support.workers import WorkerProcess

RUNS = 8
CHUNKS = 30
PARTS = [f"part{i} " for i in range(CHUNKS)]


@pytest.mark.timeout(240)
def test_many_waits_on_one_reader_ride_out_a_redis_restart(
    durable_redis: DurableRedis, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    settings = make_settings(durable_redis.url, time_limit=60.0, wait_timeout=90.0)
    worker = WorkerProcess(settings, logs_dir, concurrency=2 * RUNS, name="reader-outage")
    workers.append(worker)
    worker.wait_ready()
    # 30 chunks, 0.1 s apart: every run is mid-stream while Redis is away.
    remote = RunnableK8s(bound=SlowModel(delay=0.1, chunks=CHUNKS), settings=settings)
    runs = [remote.submit(f"r{i}", stream=True) for i in range(2 * RUNS)]
    wait_until(lambda: all(r.status().state == "running" for r in runs), 30, "every run going")
    threaded: dict[int, list[str]] = {}

    def follow_on_threads() -> None:
        def one(i: int) -> None:
            threaded[i] = [c.content for c in runs[RUNS + i].stream(timeout=90) if c.content]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(RUNS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

    def follow_on_a_loop() -> list[list[str]]:
        async def one(i: int) -> list[str]:
            return [c.content async for c in runs[i].astream(timeout=90) if c.content]

        async def every() -> list[list[str]]:
            return list(await asyncio.gather(*(one(i) for i in range(RUNS))))

        return asyncio.run(every())

    def both() -> list[Any]:
        side = threading.Thread(target=follow_on_threads)
        side.start()
        found = follow_on_a_loop()
        side.join(120)
        return found

    followed = read_across_outage(durable_redis, both)
    assert followed == [PARTS] * RUNS
    assert [threaded.get(i) for i in range(RUNS)] == [PARTS] * RUNS
    # The reader serves a new wait after the outage.
    assert remote.invoke("after").content == "echo: after"
