"""A worker SIGKILLed after its fetch took a run's message but before the run started: the
message is recorded only in kombu's `unacked` hash (with its delivery time, no index entry,
worker/transport.py), and a live worker hands it back after the visibility timeout. The run
then starts once and ends once."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from runnable_k8s import RunnableK8s
from runnable_k8s.store import keys
from tests.conftest import make_settings
from tests.reliability.conftest import outcomes, result_of, started_count, wait_until
from tests.reliability.test_delivery import SHORT, message_age
from tests.support.models import SlowModel
from tests.support.workers import WorkerProcess


@pytest.mark.timeout(120)
def test_a_worker_killed_between_delivery_and_start_leaves_its_run_to_run_once(
    own_redis_url: str, own_redis: redis.Redis, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    settings = make_settings(own_redis_url, time_limit=4.0)
    run = RunnableK8s(bound=SlowModel(delay=0.5), settings=settings).submit("not yet started")
    # A lease someone else holds (as a worker still running it would) keeps the delivery below
    # from starting the run: it has taken the message and waits for the holder, and is killed
    # there. The lease lapses by itself (12 s), as a dead holder's does.
    own_redis.set(keys.lock(run.id), b"another-worker:1", px=12_000)
    doomed = WorkerProcess(settings, logs_dir, concurrency=2, env=SHORT, name="doomed")
    workers.append(doomed)
    doomed.wait_for_log(f"duplicate delivery of running run={run.id}: waiting for its holder")
    doomed.kill()
    assert run.status().state == "queued"
    # Not on the queue any more: the unacknowledged entry is the only record of the message.
    assert own_redis.llen(settings.queue) == 0 and own_redis.hlen(keys.UNACKED) == 1
    assert own_redis.exists("unacked_index") == 0
    wait_until(lambda: message_age(own_redis, run.id) > 5.5, 15, "message older than 5 s")
    # The replacement restores it at start-up (visibility timeout 5 s), then waits out the
    # lapsing lease and runs it.
    replacement = WorkerProcess(settings, logs_dir, concurrency=2, env=SHORT, name="replacement")
    workers.append(replacement)
    assert result_of(run, 60).content == "echo: not yet started"
    assert started_count([doomed.log(), replacement.log()], run.id) == 1
    assert f"started run={run.id}" in replacement.log()
    assert outcomes(own_redis, run.id) == 1
    assert run.status().attempt == 1
    wait_until(lambda: own_redis.hlen(keys.UNACKED) == 0, 10, "message acknowledged")
