"""A worker SIGKILLed while its run holds a LangGraph thread: the run is delivered again still
holding the thread (held by run id, not by worker), so no other run of the thread starts in
the meantime, nothing deadlocks, and no update is lost."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from runnable_k8s import RunnableK8s
from runnable_k8s.store import threads
from tests.conftest import make_settings
from tests.reliability.conftest import result_of, started_count, wait_until
from tests.support.threaded import read_log
from tests.support.workers import WorkerProcess

SHORT = {"RUNNABLE_K8S_VISIBILITY_TIMEOUT": "5"}
REF = "tests.support.threaded:counter"


@pytest.mark.timeout(240)
def test_a_killed_workers_thread_run_is_redelivered_and_no_two_runs_of_the_thread_overlap(
    own_redis_url: str,
    own_redis: redis.Redis,
    logs_dir: Path,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    settings = make_settings(
        own_redis_url, time_limit=4.0, lease=3.0, allowed_refs=("tests.support.threaded:",)
    )
    log = tmp_path / "steps.log"
    env = {
        **SHORT,
        "RK8S_TEST_SQLITE_DB": str(tmp_path / "checkpoints.sqlite"),
        "RK8S_TEST_THREAD_LOG": str(log),
    }

    def start(name: str) -> WorkerProcess:
        worker = WorkerProcess(settings, logs_dir, concurrency=2, env=env, name=name)
        workers.append(worker)
        worker.wait_ready(timeout=120)
        return worker

    first, second = start("doomed-a"), start("doomed-b")
    thread = f"t-{uuid.uuid4().hex[:8]}"
    remote = RunnableK8s(ref=REF, settings=settings)
    config: Any = {"configurable": {"thread_id": thread}}
    runs = [remote.submit({"nap": 1.5, "label": f"r{i}", "steps": 1}, config) for i in range(5)]
    wait_until(lambda: log.exists() and read_log(str(log)), 30, "the first step to start")
    holder = next(w for w in (first, second) if f"started run={runs[0].id}" in w.log())
    holder.kill()
    killed_at = time.time()
    survivor = second if holder is first else first
    start("replacement")
    # Redelivery: visibility timeout 5 s, lease 3 s; the rest run one after another.
    assert sorted(result_of(run, 120)["count"] for run in runs) == [1, 2, 3, 4, 5]
    assert runs[0].status().attempt == 2
    logs = [w.log() for w in workers]
    assert started_count(logs, runs[0].id) == 2
    assert survivor.process.poll() is None

    ordered = sorted(
        (e for e in read_log(str(log)) if e["thread"] == thread), key=lambda e: e["at"]
    )
    # The killed step entered and never left; the next thing of the thread is its own
    # redelivery, after the kill; then every step enters and leaves before the next.
    assert ordered[0] == {**ordered[0], "event": "enter", "label": "r0"}
    assert ordered[0]["at"] < killed_at
    rest = ordered[1:]
    assert rest[0]["label"] == "r0" and rest[0]["at"] > killed_at
    for enter, leave in zip(rest[::2], rest[1::2], strict=True):
        assert (enter["event"], leave["event"]) == ("enter", "exit"), ordered
        assert enter["label"] == leave["label"], ordered
    assert [e["label"] for e in rest[::2]] == ["r0", "r1", "r2", "r3", "r4"]
    wait_until(
        lambda: own_redis.get(threads.thread_key(settings.queue, thread)) is None,
        10,
        "the thread to be free",
    )
