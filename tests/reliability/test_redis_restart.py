"""Redis killed and started again (same port, append-only file) while runs flow: callers get a
result or a clear error, workers reconnect, and no accepted run is lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from runnable_k8s import BrokerUnavailable, RunnableK8s, WaitTimeout
from runnable_k8s.producer.handles import RemoteRun
from runnable_k8s.store import keys
from tests.conftest import make_settings
from tests.reliability.conftest import DurableRedis, wait_until
from tests.support.models import SlowModel
from tests.support.workers import WorkerProcess


def explain(client: redis.Redis, lost: list[str], workers: list[WorkerProcess]) -> str:
    logs = "".join(w.log() for w in workers)
    detail = {r: [ln[:160] for ln in logs.splitlines() if r in ln] for r in lost[:2]}
    unacked = client.hlen(keys.UNACKED)
    return f"{len(lost)} accepted run(s) without outcome ({unacked} unacked): {detail}"


@pytest.mark.timeout(120)
def test_redis_restart_under_load_loses_no_accepted_run(  # noqa: PLR0915
    durable_redis: DurableRedis, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    # A short rescue delay: a message lost between BRPOP and kombu's bookkeeping comes back soon.
    settings = make_settings(durable_redis.url, time_limit=5.0, wait_timeout=20.0, rescue_after=3.0)
    short = {"RUNNABLE_K8S_VISIBILITY_TIMEOUT": "6"}
    for name in ("steady-a", "steady-b"):
        worker = WorkerProcess(settings, logs_dir, concurrency=8, env=short, name=name)
        workers.append(worker)
        worker.wait_ready()
    remote = RunnableK8s(bound=SlowModel(delay=0.5), settings=settings)
    accepted: list[RemoteRun] = []
    refused = 0
    waiter_outcome: list[object] = []

    def wait_during_outage(run: RemoteRun) -> None:
        try:
            waiter_outcome.append(run.result(timeout=20))
        except (BrokerUnavailable, WaitTimeout) as exc:  # a clear error, not a hang
            waiter_outcome.append(exc)

    deadline = time.monotonic() + 6.0
    killed = restarted = False
    index = 0
    while time.monotonic() < deadline:
        try:
            accepted.append(remote.submit(f"r{index}"))
        except BrokerUnavailable:
            refused += 1
        index += 1
        elapsed = 6.0 - (deadline - time.monotonic())
        if not killed and elapsed > 1.5:
            waiter = threading.Thread(target=wait_during_outage, args=(accepted[-1],))
            waiter.start()
            durable_redis.kill()
            killed = True
        if killed and not restarted and elapsed > 3.5:
            durable_redis.start()
            restarted = True
        time.sleep(0.05)
    waiter.join(30)
    assert killed and restarted
    assert refused > 0, "submissions during the outage must fail loudly"
    assert len(waiter_outcome) == 1
    # Every accepted run ends with exactly one outcome (allowing for kombu's redelivery after
    # the visibility timeout for runs whose worker lost Redis mid-way).
    client = redis.Redis.from_url(durable_redis.url)
    try:

        def missing() -> list[str]:
            return [r.id for r in accepted if not client.exists(keys.events(r.id))]

        try:
            wait_until(lambda: not missing(), 45, "an outcome for every accepted run", interval=1)
        except AssertionError:
            raise AssertionError(explain(client, missing(), workers)) from None
        for run in accepted:
            entries = client.xrange(keys.events(run.id))
            assert sum(1 for _, f in entries if f.get(b"k") == b"r") == 1
            assert run.status().state == "succeeded"
    finally:
        client.close()
    # The workers are connected again: a new run goes through.
    assert remote.invoke("after").content == "echo: after"
    assert all(w.process.poll() is None for w in workers)
