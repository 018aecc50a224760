"""What Celery reports about runs (its task events, as Flower reads them): a run that did not
succeed is not SUCCESS, its message is still acknowledged once, its outcome recorded once, and
nothing Celery reports or logs carries the run's input or the remote error's message."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from runnable_k8s import RunnableK8s, Settings
from runnable_k8s.models import DemoChatModel
from runnable_k8s.producer.client import client_for
from runnable_k8s.producer.handles import RemoteRun
from runnable_k8s.protocol.messages import Protocol
from runnable_k8s.settings import SigningKey
from runnable_k8s.store import keys
from tests.conftest import make_settings
from tests.integration.test_security import demo_json, push, request_for
from tests.reliability.conftest import wait_until
from tests.support.models import FailingModel, SlowModel
from tests.support.workers import WorkerProcess


class TaskEvents:
    """A Celery event receiver on the test Redis, as Flower runs one, in a thread."""

    def __init__(self, url: str) -> None:
        self.app = Celery("monitor", broker=url, set_as_current=False)
        self.seen: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._capture, daemon=True)
        self._thread.start()

    def _capture(self) -> None:
        with self.app.connection() as connection:
            self._receiver = self.app.events.Receiver(connection, handlers={"*": self._on_event})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.seen.append(event)

    def of(self, task_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.seen if e.get("uuid") == task_id]

    def types(self, task_id: str) -> list[str]:
        return [str(e["type"]) for e in self.of(task_id)]

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(5)
        self.app.close()


@pytest.fixture
def watched(redis_url: str, logs_dir: Path) -> Iterator[tuple[Settings, WorkerProcess, TaskEvents]]:
    settings = make_settings(redis_url)
    worker = WorkerProcess(settings, logs_dir, concurrency=8, name="watched")
    worker.wait_ready()
    events = TaskEvents(settings.require_redis_url())
    try:
        # Flower's way: turn the worker's task events on by remote control.
        replies = events.app.control.enable_events(
            destination=[worker.hostname], reply=True, timeout=5
        )
        assert "enabled" in str(replies)
        # The receiver subscribes on its first poll: warm up until it sees a run's events.
        demo = RunnableK8s(bound=DemoChatModel(), settings=settings)
        for _ in range(10):
            probe = demo.submit("warm up")
            probe.result(timeout=30)
            time.sleep(0.5)
            if "task-succeeded" in events.types(probe.id):
                break
        else:
            raise AssertionError("the event receiver never saw a task event")
        yield settings, worker, events
    finally:
        events.close()
        worker.stop()


def terminal(events: TaskEvents, task_id: str) -> dict[str, Any]:
    wait_until(
        lambda: {"task-succeeded", "task-failed"} & set(events.types(task_id)),
        30,
        f"a final task event for {task_id}",
    )
    time.sleep(0.5)  # room for a second (wrong) one to arrive
    (final,) = finals_of(events, task_id)
    return final


def finals_of(events: TaskEvents, task_id: str) -> list[dict[str, Any]]:
    return [e for e in events.of(task_id) if e["type"] in ("task-succeeded", "task-failed")]


def recorded_outcomes(client: redis.Redis, run_id: str) -> int:
    return sum(1 for _, f in client.xrange(keys.events(run_id)) if f.get(b"k") == b"r")


def settled(client: redis.Redis, settings: Settings, run_ids: set[str]) -> bool:
    """None of `run_ids` is queued or held unacknowledged any more."""
    held = [json.loads(raw)[0] for raw in client.hvals(keys.UNACKED)]
    queued = [json.loads(raw) for raw in client.lrange(settings.queue, 0, -1)]
    return not any(m["headers"]["id"] in run_ids for m in held + queued)


def test_celery_task_state_tells_each_runs_outcome(
    watched: tuple[Settings, WorkerProcess, TaskEvents], redis_client: redis.Redis
) -> None:
    settings, worker, events = watched
    marker = f"private-{uuid.uuid4().hex}"
    protocol = Protocol(settings)
    client = client_for(settings)
    # Submitted as sealed requests kept here, to be replayed below.
    succeeding = request_for(settings, demo_json(settings), marker)
    failing_model = FailingModel(message=f"remote says {marker}")
    failing = request_for(settings, protocol.runnables.encode_runnable(failing_model), marker)
    client.submit([succeeding, failing])
    runs: dict[str, RemoteRun] = {}
    slow = RunnableK8s(bound=SlowModel(delay=30.0), settings=settings, time_limit=0.5)
    runs["timeout"] = slow.submit(marker)
    runs["cancelled"] = RunnableK8s(bound=SlowModel(delay=30.0), settings=settings).submit(marker)
    worker.wait_for_log(f"started run={runs['cancelled'].id}")
    runs["cancelled"].cancel()
    expired = request_for(settings, demo_json(settings), marker, expires_at=time.time() - 1)
    client.submit([expired])
    # Sealed with another key: refused by the worker at every delivery, never run.
    forger = settings.replace(signing_key=SigningKey(b"k" * 48))
    forged = request_for(settings, demo_json(settings), marker)
    push(redis_client, settings, Protocol(forger).seal_request(forged)[0], forged.run_id)

    ids = {label: run.id for label, run in runs.items()}
    ids["succeeded"], ids["failed"] = succeeding.run_id, failing.run_id
    ids["expired"] = expired.run_id
    ids["refused"] = forged.run_id
    finals = {label: terminal(events, run_id) for label, run_id in ids.items()}

    assert finals["succeeded"]["type"] == "task-succeeded"
    expected = {
        "failed": f"run={ids['failed']} outcome=failed error=ValueError",
        "timeout": f"run={ids['timeout']} outcome=timeout",
        "cancelled": f"run={ids['cancelled']} outcome=cancelled",
        "expired": f"run={ids['expired']} outcome=expired",
        "refused": f"claimed_run={ids['refused']} outcome=refused reason=bad_signature",
    }
    for label, text in expected.items():
        final = finals[label]
        assert final["type"] == "task-failed", (label, final)
        assert final["exception"] == f"RunNotSucceeded('{text}')", label

    # Every message acknowledged after one delivery; every run's outcome recorded once.
    wait_until(lambda: settled(redis_client, settings, set(ids.values())), 10, "all acked")
    for label, run_id in ids.items():
        assert events.types(run_id).count("task-received") == 1, label
        assert recorded_outcomes(redis_client, run_id) == (0 if label == "refused" else 1)
    # Nothing Celery reports carries the input or the remote error's text.
    reported = json.dumps([events.of(run_id) for run_id in ids.values()])
    assert marker not in reported
    # One INFO line per run that did not succeed, no traceback from Celery.
    log = worker.log()
    assert "raised unexpected" not in log
    assert "Traceback" not in log
    assert marker not in log
    for label, run_id in ids.items():
        count = log.count(f"Task runnable_k8s.run[{run_id}] raised expected: RunNotSucceeded(")
        assert count == (0 if label == "succeeded" else 1), label

    # A replayed message of a finished run does not run it again, and Flower (one state per
    # task id) keeps showing the run's recorded outcome, not the replay's refusal.
    for request in (succeeding, failing):
        push(redis_client, settings, protocol.seal_request(request)[0], request.run_id)
    for request in (succeeding, failing):
        wait_until(lambda r=request: len(finals_of(events, r.run_id)) == 2, 30, "replay's end")
    assert [e["type"] for e in finals_of(events, succeeding.run_id)] == ["task-succeeded"] * 2
    again = finals_of(events, failing.run_id)
    assert [e["type"] for e in again] == ["task-failed"] * 2
    assert [e["exception"] for e in again] == [finals["failed"]["exception"]] * 2
    for request in (succeeding, failing):
        assert recorded_outcomes(redis_client, request.run_id) == 1
