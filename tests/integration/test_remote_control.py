"""What Flower and `celery control` do to runs: revoke (with or without terminate) cancels a
run as `cancel` does, and a worker can start with task events on. Real worker processes; the
commands and events go through the test Redis from a separate Celery app, as Flower's do."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from runnable_k8s import RunCancelled, RunnableK8s, Settings
from runnable_k8s.producer.client import client_for, new_run_id
from runnable_k8s.producer.handles import RemoteRun
from runnable_k8s.protocol.messages import Protocol, RunRequest
from tests.conftest import make_settings
from tests.support.models import SlowModel
from tests.support.workers import WorkerProcess

PIDBOX_ERROR = "pidbox command error"


def wait_for_state(run: RemoteRun, state: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while run.status().state != state:
        assert time.monotonic() < deadline, f"run {run.id} is {run.status().state}, not {state}"
        time.sleep(0.02)


class Busy:
    """A worker with one pool thread, so a second run stays queued while the first runs."""

    def __init__(self, settings: Settings, worker: WorkerProcess, app: Celery) -> None:
        self.settings = settings
        self.worker = worker
        self.app = app  # the monitor's own app, as Flower has
        self.slow = RunnableK8s(bound=SlowModel(delay=60.0, chunks=1), settings=settings)
        self.quick = RunnableK8s(bound=SlowModel(delay=0.01, chunks=1), settings=settings)

    def serves(self) -> None:
        """The worker still takes and finishes runs."""
        marker = uuid.uuid4().hex
        assert self.quick.invoke(marker).content == f"echo: {marker}"


@pytest.fixture(scope="module")
def busy(redis_url: str, logs_dir: Path) -> Iterator[Busy]:
    settings = make_settings(redis_url)
    worker = WorkerProcess(settings, logs_dir, concurrency=1, name="revoked")
    app = Celery("monitor", broker=redis_url, set_as_current=False)
    try:
        worker.wait_ready()
        yield Busy(settings, worker, app)
    finally:
        app.close()
        worker.stop()
    assert PIDBOX_ERROR not in worker.log()


@pytest.mark.parametrize("terminate", [True, False], ids=["terminate", "revoke"])
def test_revoking_a_running_run_cancels_it(busy: Busy, terminate: bool) -> None:
    run = busy.slow.submit("a minute")
    wait_for_state(run, "running")
    busy.app.control.revoke(run.id, terminate=terminate, signal="SIGTERM")
    with pytest.raises(RunCancelled):
        run.result(timeout=20)
    assert run.status().state == "cancelled"
    busy.worker.wait_for_log(f"finished run={run.id} name=SlowModel state=cancelled")
    assert f"by remote control run={run.id}: cancelling" in busy.worker.log()  # its only trace
    busy.serves()
    assert PIDBOX_ERROR not in busy.worker.log()


def test_terminate_command_cancels_a_running_run(busy: Busy) -> None:
    run = busy.slow.submit("a minute")
    wait_for_state(run, "running")
    # `celery control terminate SIGKILL <id>` (app.control.terminate sends a revoke instead).
    busy.app.control.broadcast("terminate", arguments={"signal": "SIGKILL", "task_id": run.id})
    with pytest.raises(RunCancelled):
        run.result(timeout=20)
    busy.serves()


@pytest.mark.parametrize("terminate", [True, False], ids=["terminate", "revoke"])
def test_revoking_a_queued_run_records_it_cancelled(busy: Busy, terminate: bool) -> None:
    holder = busy.slow.submit("holds the only pool thread")
    wait_for_state(holder, "running")
    queued = busy.quick.submit("never starts")
    assert queued.status().state == "queued"
    busy.app.control.revoke(queued.id, terminate=terminate)
    # Recorded at once, while its message still waits in the queue.
    wait_for_state(queued, "cancelled", timeout=10)
    with pytest.raises(RunCancelled):
        queued.result(timeout=5)
    # Its message, delivered once the pool thread is free, starts nothing and changes nothing.
    holder.cancel()
    with pytest.raises(RunCancelled):
        holder.result(timeout=20)
    busy.worker.wait_for_log(f"run={queued.id}")
    busy.serves()
    assert queued.status().state == "cancelled"
    assert f"started run={queued.id}" not in busy.worker.log()


def test_revoking_unknown_ids_is_harmless(busy: Busy) -> None:
    unknown = new_run_id()
    replies = busy.app.control.broadcast(
        "revoke",
        arguments={"task_id": [unknown, "x" * 5000, 7, None], "terminate": True},
        reply=True,
        timeout=3,
    )
    assert replies, "the worker did not answer"
    texts = [reply.get("ok", "") for answer in replies for reply in answer.values()]
    assert all(f"unknown: {unknown}" in text for text in texts), replies
    assert all("3 invalid id(s)" in text for text in texts), replies
    busy.serves()
    assert PIDBOX_ERROR not in busy.worker.log()


def test_a_run_celery_drops_as_revoked_still_gets_its_outcome(busy: Busy) -> None:
    """Celery also learns revoked ids from other workers (the `hello` of mingle), and drops a
    message with such an id on delivery: that run must not be left queued forever."""
    run_id = new_run_id()
    replies = busy.app.control.broadcast(
        "hello",
        arguments={"from_node": "elsewhere@test", "revoked": [run_id]},
        reply=True,
        timeout=3,
    )
    assert any(run_id in reply["revoked"] for answer in replies for reply in answer.values())
    protocol = Protocol(busy.settings)
    request = RunRequest(
        run_id=run_id,
        mode="invoke",
        name="SlowModel",
        runnable=protocol.runnables.encode_runnable(SlowModel(delay=0.01, chunks=1)),
        input=protocol.data.encode_data("dropped by Celery"),
        expires_at=time.time() + 600,
    )
    client_for(busy.settings).submit([request])
    run = RemoteRun(run_id, busy.settings)
    with pytest.raises(RunCancelled):
        run.result(timeout=20)
    assert run.status().state == "cancelled"
    busy.serves()


def test_a_worker_without_remote_control_ignores_revoke(redis_url: str, logs_dir: Path) -> None:
    settings = make_settings(redis_url)
    hostname_marker = f"deaf-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(
        settings,
        logs_dir,
        concurrency=2,
        env={"RUNNABLE_K8S_REMOTE_CONTROL": "false"},
        name=hostname_marker,
    )
    app = Celery("monitor", broker=redis_url, set_as_current=False)
    try:
        worker.wait_ready()
        run = RunnableK8s(bound=SlowModel(delay=1.5, chunks=1), settings=settings).submit("x")
        wait_for_state(run, "running")
        app.control.revoke(run.id, terminate=True)
        assert run.result(timeout=20).content == "echo: x"
        pings = app.control.ping(timeout=1.0) or []
        assert not [host for reply in pings for host in reply if hostname_marker in host]
    finally:
        app.close()
        worker.stop()


# -- task events ------------------------------------------------------------------------------


class Events:
    """Celery's own event receiver on the test Redis, in a thread, as Flower runs one."""

    def __init__(self, redis_url: str) -> None:
        self.app = Celery("monitor", broker=redis_url, set_as_current=False)
        self.seen: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._connection = self.app.connection_for_read()
        self.receiver = self.app.events.Receiver(self._connection, handlers={"*": self._on})
        self._thread = threading.Thread(target=self._capture, daemon=True)

    def _on(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.seen.append(event)

    def _capture(self) -> None:
        self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def start(self) -> None:
        """Start, and return once events published from now on are received."""
        self._thread.start()
        marker = uuid.uuid4().hex
        with self.app.connection_for_write() as connection:
            dispatcher = self.app.events.Dispatcher(connection, hostname="probe@test")
            deadline = time.monotonic() + 10
            while not self.matching(lambda e: e.get("marker") == marker):
                assert time.monotonic() < deadline, "the event receiver never started"
                dispatcher.send("worker-probe", marker=marker)
                time.sleep(0.1)

    def matching(self, test: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [event for event in self.seen if test(event)]

    def close(self) -> None:
        self.receiver.should_stop = True
        self._thread.join(10)
        self._connection.release()
        self.app.close()


@pytest.fixture
def events(redis_url: str) -> Iterator[Events]:
    receiver = Events(redis_url)
    receiver.start()
    yield receiver
    receiver.close()


def first_run_events(
    events: Events, redis_url: str, logs_dir: Path, env: dict[str, str]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Start a worker, give it one run, and return the task event types seen for that run
    and the worker events seen from that worker, after at least one worker heartbeat."""
    settings = make_settings(redis_url)
    name = f"events{uuid.uuid4().hex[:8]}"  # in the worker's hostname
    worker = WorkerProcess(settings, logs_dir, concurrency=2, env=env, name=name)
    try:
        worker.wait_ready()
        run = RunnableK8s(bound=SlowModel(delay=0.01, chunks=1), settings=settings).submit("x")
        assert run.result(timeout=20).content == "echo: x"
        worker.wait_for_log(f"Task runnable_k8s.run[{run.id}] succeeded")
        deadline = time.monotonic() + 10
        # Worker heartbeats (every 2 s) show the receiver hears this worker either way.
        while not events.matching(
            lambda e: e["type"] == "worker-heartbeat" and name in e["hostname"]
        ):
            assert time.monotonic() < deadline, "no heartbeat from the worker reached the receiver"
            time.sleep(0.1)
        time.sleep(0.5)  # anything sent for the run was sent before that heartbeat; margin
        mine = events.matching(lambda e: e.get("uuid") == run.id)
        worker_events = events.matching(lambda e: name in e["hostname"])
        return [e["type"] for e in mine], worker_events
    finally:
        worker.stop()


def test_a_worker_with_task_events_on_reports_its_first_run(
    events: Events, redis_url: str, logs_dir: Path
) -> None:
    types, _ = first_run_events(events, redis_url, logs_dir, {"RUNNABLE_K8S_TASK_EVENTS": "true"})
    assert set(types) == {"task-received", "task-started", "task-succeeded"}, types


def test_a_worker_with_task_events_off_reports_no_run(
    events: Events, redis_url: str, logs_dir: Path
) -> None:
    types, worker_events = first_run_events(events, redis_url, logs_dir, {})
    assert types == []
    assert not [e for e in worker_events if e["type"].startswith("task-")]
