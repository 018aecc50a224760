"""Operating a worker: its Prometheus metrics, its JSON log lines, its liveness and readiness
files, and what Celery's remote control shows. All against real worker processes."""

from __future__ import annotations

import json
import secrets
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from runnable_k8s import RemoteError, RunCancelled, RunnableK8s, Settings
from runnable_k8s.producer.client import new_run_id
from runnable_k8s.producer.handles import RemoteRun
from runnable_k8s.protocol import task_message
from runnable_k8s.protocol.messages import Protocol, RunRequest
from runnable_k8s.worker import health
from runnable_k8s.worker.metrics import MAX_NAME_LENGTH, OTHER, NameLabels
from tests.conftest import make_settings
from tests.support.models import FailingModel, FlakyModel, LoopBlockingModel, SlowModel
from tests.support.workers import WorkerProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

OPENAI_KEY = "sk-test-" + secrets.token_hex(20)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Observed:
    def __init__(self, settings: Settings, worker: WorkerProcess, port: int) -> None:
        self.settings = settings
        self.worker = worker
        self.port = port

    def scrape(self) -> Samples:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.worker.log().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def observed(redis_url: str, logs_dir: Path) -> Iterator[Observed]:
    """A worker with metrics on, JSON logs, and a model API key in its environment."""
    settings = make_settings(redis_url)
    port = free_port()
    env = {
        "RUNNABLE_K8S_METRICS_PORT": str(port),
        "RUNNABLE_K8S_LOG_JSON": "true",
        "OPENAI_API_KEY": OPENAI_KEY,
    }
    process = WorkerProcess(settings, logs_dir, concurrency=8, env=env, name="observed")
    process.wait_ready()
    yield Observed(settings, process, port)
    process.stop()


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def wait_for_state(run: RemoteRun, state: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while run.status().state != state:
        assert time.monotonic() < deadline, f"run {run.id} never reached {state}"
        time.sleep(0.02)


def wait_for_increase(
    observed: Observed,
    before: Samples,
    expected: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> Samples:
    """Scrape until every expected increment is there (outcomes are counted just after they
    are published, so a caller can see a result a moment before the counter moves)."""
    deadline = time.monotonic() + 10
    while True:
        after = observed.scrape()
        got = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in expected}
        if got == expected or time.monotonic() > deadline:
            assert got == expected
            return after
        time.sleep(0.05)


def key(metric: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (metric, frozenset(labels.items()))


def forge(settings: Settings, client: redis.Redis, text: str) -> str:
    """Push a run request whose body was altered after signing; return its claimed id."""
    protocol = Protocol(settings)
    request = RunRequest(
        run_id=new_run_id(),
        mode="invoke",
        name="SlowModel",
        runnable=protocol.runnables.encode_runnable(SlowModel(delay=0.01)),
        input=protocol.data.encode_data(text),
        expires_at=time.time() + 600,
    )
    wire, _ = protocol.seal_request(request)
    tampered = wire.replace(text.encode(), text.upper().encode())
    assert tampered != wire
    message = task_message.build(
        tampered.decode(), run_id=request.run_id, queue=settings.queue, description="forged"
    )
    client.lpush(settings.queue, message)
    return request.run_id


# -- metrics --------------------------------------------------------------------------------


def test_metrics_count_each_outcome_exactly(observed: Observed, redis_client: redis.Redis) -> None:
    settings = observed.settings
    began = time.time()
    before = observed.scrape()
    assert value(before, "runnable_k8s_runs_in_flight") == 0

    good = RunnableK8s(bound=SlowModel(delay=0.05, chunks=1), settings=settings)
    assert good.invoke("hello").content == "echo: hello"
    assert good.invoke("again").content == "echo: again"  # the runnable comes from the cache
    with pytest.raises(RemoteError):
        RunnableK8s(bound=FailingModel(), settings=settings).invoke("fail")
    flaky = FlakyModel(failures=1, token=uuid.uuid4().hex)
    assert "ok after 2 calls" in RunnableK8s(bound=flaky, settings=settings).invoke("x").content

    slow = RunnableK8s(bound=SlowModel(delay=60.0, chunks=1), settings=settings)
    running = slow.submit("a minute")
    wait_for_state(running, "running")
    assert value(observed.scrape(), "runnable_k8s_runs_in_flight") == 1
    running.cancel()
    with pytest.raises(RunCancelled):
        running.result(timeout=30)

    forged = forge(settings, redis_client, "forged input")
    observed.worker.wait_for_log(forged)
    redis_client.lpush(
        settings.queue,
        task_message.build("not an envelope", run_id="x", queue=settings.queue, description="x"),
    )

    runs = "runnable_k8s_runs_total"
    after = wait_for_increase(
        observed,
        before,
        {
            key(runs, name="SlowModel", outcome="succeeded"): 2,
            key(runs, name="FailingModel", outcome="failed"): 1,
            key(runs, name="FlakyModel", outcome="succeeded"): 1,
            key(runs, name="SlowModel", outcome="cancelled"): 1,
            key(runs, name=OTHER, outcome="failed"): 0,
            key("runnable_k8s_run_retries_total", name="FlakyModel"): 1,
            key("runnable_k8s_rejected_messages_total", reason="bad_signature"): 1,
            key("runnable_k8s_rejected_messages_total", reason="malformed"): 1,
            key("runnable_k8s_rejected_messages_total", reason="replay"): 0,
            key("runnable_k8s_run_duration_seconds_count", name="SlowModel"): 3,
            key("runnable_k8s_run_duration_seconds_count", name="FailingModel"): 1,
            key("runnable_k8s_queue_wait_seconds_count"): 5,
            key("runnable_k8s_runnable_cache_hits_total"): 1,
            key("runnable_k8s_runnable_cache_misses_total"): 4,
        },
    )
    assert value(after, "runnable_k8s_runs_in_flight") == 0
    # The cancelled run lasted until its cancellation, the others well under a minute.
    assert 0 < value(after, "runnable_k8s_run_duration_seconds_sum", name="SlowModel") < 30
    # Each of the five runs waited a little, and none longer than this test has run.
    waited = value(after, "runnable_k8s_queue_wait_seconds_sum") - value(
        before, "runnable_k8s_queue_wait_seconds_sum"
    )
    assert 0 < waited < 5 * (time.time() - began)


def test_health_is_exported_as_metrics(observed: Observed) -> None:
    samples = observed.scrape()
    now = time.time()
    assert now - value(samples, "runnable_k8s_worker_heartbeat_timestamp_seconds") < 5
    assert now - value(samples, "runnable_k8s_worker_ready_timestamp_seconds") < 5
    assert value(samples, "runnable_k8s_worker_redis_up") == 1


def test_runnable_names_are_bounded_labels(observed: Observed) -> None:
    settings = observed.settings
    long_name = "user text, chosen by the caller! " * 10
    cleaned = NameLabels.clean(long_name)
    before = observed.scrape()
    remote = RunnableK8s(bound=SlowModel(delay=0.01, chunks=1), settings=settings, name=long_name)
    remote.invoke("hi")
    samples = wait_for_increase(
        observed, before, {key("runnable_k8s_runs_total", name=cleaned, outcome="succeeded"): 1}
    )
    names = {
        dict(labels).get("name")
        for (metric, labels) in samples
        if metric == "runnable_k8s_runs_total"
    }
    assert len(cleaned) == MAX_NAME_LENGTH
    assert all(ch.isalnum() or ch in "_.:/ -" for ch in cleaned)
    assert long_name not in names


def test_name_labels_admit_loaded_names_up_to_a_limit() -> None:
    labels = NameLabels(limit=2)
    assert labels.label("never loaded") == OTHER
    assert labels.admit("a") == "a"
    assert labels.admit("b\n{x}") == "b__x_"
    assert labels.admit("c") == OTHER  # over the limit
    assert labels.label("a") == "a"
    assert labels.label("c") == OTHER
    assert labels.admit("") == OTHER


# -- logs -----------------------------------------------------------------------------------


def test_json_log_lines_carry_run_events_and_no_secrets(
    observed: Observed, redis_client: redis.Redis
) -> None:
    settings = observed.settings
    marker = f"private question {uuid.uuid4().hex}"
    run = RunnableK8s(bound=SlowModel(delay=0.01, chunks=1), settings=settings).submit(marker)
    assert marker in run.result(timeout=30).content
    forged = forge(settings, redis_client, marker)
    # Its rejection itself: Celery's "received" line names the id a moment before.
    observed.worker.wait_for_log(f'"event": "rejected", "run_id": "{forged}"')
    observed.worker.wait_for_log(f'"event": "finished", "run_id": "{run.id}"')

    lines = observed.log_lines()  # every line is one JSON object (no banner, no plain text)
    keys = {"ts", "level", "event", "run_id", "name", "attempt", "duration", "outcome", "reason"}
    assert all(keys | {"worker", "message"} <= set(line) for line in lines)
    assert any(line["logger"].startswith("celery") for line in lines)  # Celery's own lines too

    events = {line["event"]: line for line in lines if line["run_id"] == run.id}
    assert set(events) >= {"received", "started", "finished"}
    assert events["started"]["name"] == "SlowModel"
    assert events["started"]["attempt"] == 1
    finished = events["finished"]
    assert finished["outcome"] == "succeeded"
    assert finished["attempt"] == 1
    assert 0 <= finished["duration"] < 30
    assert finished["worker"]

    rejected = [line for line in lines if line["run_id"] == forged]
    assert [line["event"] for line in rejected] == ["rejected"]
    assert rejected[0]["reason"] == "bad_signature"
    assert rejected[0]["level"] == "WARNING"

    text = observed.worker.log()
    assert marker not in text
    assert marker.upper() not in text
    assert OPENAI_KEY not in text
    assert settings.require_signing_key().reveal().decode() not in text


def test_text_logs_have_no_secrets(settings: Settings, worker: WorkerProcess) -> None:
    RunnableK8s(bound=SlowModel(delay=0.01, chunks=1), settings=settings).invoke("hi")
    text = worker.log()
    assert "started run=" in text
    assert settings.require_signing_key().reveal().decode() not in text


# -- Celery's remote control ----------------------------------------------------------------


def test_inspect_active_shows_the_description_not_the_envelope(observed: Observed) -> None:
    settings = observed.settings
    marker = f"private question {uuid.uuid4().hex}"
    run = RunnableK8s(bound=SlowModel(delay=60.0, chunks=1), settings=settings).submit(marker)
    wait_for_state(run, "running")
    app = Celery("probe", broker=settings.require_redis_url(), set_as_current=False)
    try:
        replies = app.control.inspect(timeout=1.5).active() or {}
        hosts = [host for host, tasks in replies.items() for t in tasks if t["id"] == run.id]
        assert len(hosts) == 1, replies
        (mine,) = [t for t in replies[hosts[0]] if t["id"] == run.id]
        assert mine["name"] == "runnable_k8s.run"
        assert mine["args"] == f"invoke SlowModel run={run.id}"
        assert marker not in json.dumps(replies)
        # The other views of a request describe it the same way.
        query = app.control.inspect(destination=hosts, timeout=3, limit=1).query_task(run.id)
        assert query[hosts[0]][run.id][1]["args"] == mine["args"]
        assert marker not in json.dumps(query)
        # Flower turns task events on through remote control; the worker must answer.
        control = {"destination": hosts, "reply": True, "timeout": 3, "limit": 1}
        assert "enabled" in str(app.control.enable_events(**control))
        assert "disabled" in str(app.control.disable_events(**control))
    finally:
        run.cancel()
        app.close()
    with pytest.raises(RunCancelled):
        run.result(timeout=30)


# -- health ---------------------------------------------------------------------------------


def test_a_wedged_event_loop_turns_liveness_red(redis_url: str, logs_dir: Path) -> None:
    settings = make_settings(redis_url)
    port = free_port()
    worker = WorkerProcess(
        settings, logs_dir, concurrency=2, env={"RUNNABLE_K8S_METRICS_PORT": str(port)}, name="hb"
    )
    try:
        worker.wait_ready()
        hb = str(worker.heartbeat)
        deadline = time.monotonic() + 10
        while not (health.check(hb, 2.0) and health.check(hb, 2.0, ready=True)):
            assert time.monotonic() < deadline, "heartbeat never started"
            time.sleep(0.1)
        assert health.main([hb, "2"]) == 0

        # Long enough that the checks below all fall inside the block on a loaded machine.
        blocking = RunnableK8s(bound=LoopBlockingModel(seconds=8.0), settings=settings)
        run = blocking.submit("block")
        worker.wait_for_log(f"started run={run.id}")
        deadline = time.monotonic() + 10
        # Readiness is touched just after liveness (after a PING), so it goes stale a PING's
        # round trip later: wait for both rather than check readiness at the first instant.
        while health.check(hb, 2.0) or health.check(hb, 2.0, ready=True):
            assert time.monotonic() < deadline, "liveness stayed green on a wedged loop"
            time.sleep(0.1)
        assert health.age(hb) >= 2.0
        assert health.main([hb, "2"]) == 1
        # The metrics endpoint still answers (its own thread) and shows the stale heartbeat.
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        stamp = next(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "runnable_k8s_worker_heartbeat_timestamp_seconds"
        )
        assert time.time() - stamp >= 2.0

        assert run.result(timeout=30).content == "unblocked"
        deadline = time.monotonic() + 10
        while not health.check(hb, 2.0):
            assert time.monotonic() < deadline, "liveness did not recover"
            time.sleep(0.1)
    finally:
        worker.stop()
