"""Workers killed, stopped and duplicated mid-run: every run ends once, with its result."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import redis

from runnable_k8s import RunnableK8s
from runnable_k8s.store import keys
from tests.conftest import make_settings
from tests.reliability.conftest import outcomes, result_of, started_count, wait_until
from tests.support.models import SlowModel
from tests.support.workers import WorkerProcess

# Short timeouts so a redelivery happens within a test. The visibility timeout must stay
# above the time limit (Settings refuses otherwise).
SHORT = {"RUNNABLE_K8S_VISIBILITY_TIMEOUT": "5"}


def message_age(client: redis.Redis, run_id: str) -> float:
    """Seconds since kombu delivered the run's message (the time in its `unacked` entry)."""
    for raw in client.hvals(keys.UNACKED):
        entry = json.loads(raw)
        if entry[0]["headers"]["id"] == run_id:
            assert len(entry) == 4, f"run {run_id}'s unacked entry has no delivery time"
            return time.time() - float(entry[3])
    raise AssertionError(f"run {run_id} is not in the unacked hash")


@pytest.mark.timeout(90)
def test_sigkilled_worker_run_is_delivered_again_and_the_caller_gets_it(
    own_redis_url: str, own_redis: redis.Redis, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    settings = make_settings(own_redis_url, time_limit=4.0)
    first = WorkerProcess(settings, logs_dir, concurrency=2, env=SHORT, name="doomed")
    workers.append(first)
    first.wait_ready()
    run = RunnableK8s(bound=SlowModel(delay=3.0), settings=settings).submit("survive")
    first.wait_for_log(f"started run={run.id}")
    first.kill()
    # The message stays in kombu's unacked hash: counted as in flight, not lost.
    assert own_redis.hlen(keys.UNACKED) == 1
    # kombu restores a message older than the visibility timeout when a worker starts (as the
    # replacement pod of a killed one does).
    wait_until(lambda: message_age(own_redis, run.id) > 5.5, 15, "message older than 5 s")
    second = WorkerProcess(settings, logs_dir, concurrency=2, env=SHORT, name="replacement")
    workers.append(second)
    second.wait_ready()
    assert result_of(run, 60).content == "echo: survive"
    status = run.status()
    assert (status.state, status.attempt) == ("succeeded", 2)
    assert started_count([first.log(), second.log()], run.id) == 2
    assert outcomes(own_redis, run.id) == 1
    wait_until(lambda: own_redis.hlen(keys.UNACKED) == 0, 10, "message acknowledged")


@pytest.mark.timeout(60)
def test_a_live_worker_redelivers_a_killed_workers_run_soon_after_the_visibility_timeout(
    own_redis_url: str, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    settings = make_settings(own_redis_url, time_limit=4.0)
    doomed = WorkerProcess(settings, logs_dir, concurrency=2, env=SHORT, name="doomed")
    survivor = WorkerProcess(settings, logs_dir, concurrency=2, env=SHORT, name="survivor")
    workers.extend([doomed, survivor])
    doomed.wait_ready()
    survivor.wait_ready()
    remote = RunnableK8s(bound=SlowModel(delay=2.0), settings=settings)
    # Both workers are idle and polling: the run goes to one of them; kill that one.
    run = remote.submit("orphan")
    wait_until(lambda: f"started run={run.id}" in doomed.log() + survivor.log(), 20, "run started")
    holder, other = (doomed, survivor) if f"run={run.id}" in doomed.log() else (survivor, doomed)
    holder.kill()
    # Visibility timeout 5 s + lease 15 s + run 2 s: 35 s is ample once a sweep runs.
    assert result_of(run, 35).content == "echo: orphan"
    assert started_count([other.log()], run.id) == 1


@pytest.mark.timeout(90)
def test_sigtermed_worker_finishes_its_run_and_starts_none_submitted_after_the_signal(
    own_redis_url: str, own_redis: redis.Redis, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    settings = make_settings(own_redis_url, time_limit=30.0)
    worker = WorkerProcess(settings, logs_dir, concurrency=4, name="warm")
    workers.append(worker)
    worker.wait_ready()
    remote = RunnableK8s(bound=SlowModel(delay=3.0), settings=settings)
    run = remote.submit("finish me")
    worker.wait_for_log(f"started run={run.id}")
    worker.process.send_signal(signal.SIGTERM)
    # Right after the signal, while the worker's fetch (BRPOP) is still in flight: that fetch
    # pops one of these, and the worker must hand it back instead of running it.
    late = [remote.submit(f"after the signal {i}") for i in range(3)]
    worker.wait_for_log("Warm shutdown")
    late.append(remote.submit("after the shutdown began"))
    assert result_of(run, 30).content == "echo: finish me"
    assert worker.process.wait(30) == 0
    exited_at = time.time()
    finished_at = run.status().finished_at
    assert finished_at is not None and exited_at >= finished_at
    log = worker.log()
    assert f"finished run={run.id}" in log
    assert outcomes(own_redis, run.id) == 1
    for other in late:
        assert f"started run={other.id}" not in log
        assert other.status().state == "queued"
    # Handed back at once, not left unacknowledged until the visibility timeout (330 s here).
    assert own_redis.llen(settings.queue) == len(late)
    assert own_redis.hlen(keys.UNACKED) == 0
    successor = WorkerProcess(settings, logs_dir, concurrency=4, name="successor")
    workers.append(successor)
    for i, other in enumerate(late[:-1]):
        assert result_of(other, 30).content == f"echo: after the signal {i}"
    assert result_of(late[-1], 30).content == "echo: after the shutdown began"
    for other in late:
        assert started_count([worker.log(), successor.log()], other.id) == 1
        assert outcomes(own_redis, other.id) == 1


@pytest.mark.timeout(90)
def test_duplicate_delivery_never_runs_a_run_twice_and_respects_its_outcome(
    own_redis_url: str, own_redis: redis.Redis, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    settings = make_settings(own_redis_url, time_limit=30.0)
    holder = WorkerProcess(settings, logs_dir, concurrency=4, name="holder")
    workers.append(holder)
    holder.wait_ready()
    run = RunnableK8s(bound=SlowModel(delay=12.0), settings=settings).submit("once")
    holder.wait_for_log(f"started run={run.id}")
    (raw,) = own_redis.hvals(keys.UNACKED)  # the one message the holder holds
    message = json.loads(raw)[0]
    # A worker whose visibility timeout (2 s) is shorter than this run restores its message
    # at start-up: a real kombu redelivery of a run that is still running.
    wait_until(lambda: message_age(own_redis, run.id) > 2.5, 10, "message older than 2 s")
    hasty = WorkerProcess(
        settings,
        logs_dir,
        concurrency=4,
        env={"RUNNABLE_K8S_TIME_LIMIT": "1", "RUNNABLE_K8S_VISIBILITY_TIMEOUT": "2"},
        name="hasty",
    )
    workers.append(hasty)
    wait_until(
        lambda: f"duplicate delivery of running run={run.id}" in holder.log() + hasty.log(),
        30,
        "the duplicate delivery waits for the holder",
    )
    assert result_of(run, 30).content == "echo: once"

    def ignored() -> int:
        logs = holder.log() + hasty.log()
        return logs.count(f"ignored duplicate delivery of run={run.id}") + logs.count(
            f"ignored delivery of finished run run={run.id}"
        )

    def waiting() -> int:
        return (holder.log() + hasty.log()).count(f"duplicate delivery of running run={run.id}")

    # Every waiting delivery (the short visibility timeout may redeliver more than once) sees
    # the holder's outcome and ends without running the run.
    wait_until(
        lambda: ignored() >= waiting() >= 1, 10, "the duplicate deliveries end without running"
    )
    # A delivery after the outcome (e.g. a sweep that raced the ack) is ignored too.
    before = ignored()
    own_redis.lpush(settings.queue, json.dumps(message))
    wait_until(lambda: ignored() > before, 20, "the late delivery is ignored")
    assert started_count([holder.log(), hasty.log()], run.id) == 1
    assert outcomes(own_redis, run.id) == 1
    assert run.status().attempt == 1


@pytest.mark.timeout(90)
def test_run_handed_back_by_a_stopping_worker_keeps_its_place_in_the_queue(
    own_redis_url: str, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    # A stopping worker's fetch pops the oldest queued run: handed back, it is still the
    # oldest and goes first, not behind every run submitted after it (with a long backlog it
    # could otherwise wait past its expiry).
    settings = make_settings(own_redis_url, time_limit=30.0)
    stopping = WorkerProcess(settings, logs_dir, concurrency=2, name="stopping")
    workers.append(stopping)
    stopping.wait_ready()
    remote = RunnableK8s(bound=SlowModel(delay=0.2, chunks=1), settings=settings)
    stopping.process.send_signal(signal.SIGTERM)
    runs = [remote.submit(f"in order {i}") for i in range(4)]
    assert stopping.process.wait(30) == 0
    handed = [run for run in runs if f"handed back run={run.id}" in stopping.log()]
    assert handed, "the stopping worker's fetch popped none of the runs"
    successor = WorkerProcess(settings, logs_dir, concurrency=1, name="in-order")
    workers.append(successor)
    for run in runs:
        result_of(run, 30)
    log = successor.log()
    starts = sorted(runs, key=lambda run: log.index(f"started run={run.id}"))
    assert starts[0] is handed[0], [runs.index(run) for run in starts]
