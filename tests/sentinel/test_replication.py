"""`replica_acks`: an enqueue counts only once a replica has it, and a worker's outcome is
waited for too (a stopped replica makes both visible)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from runnable_k8s import NotReplicated, RunnableK8s
from tests.conftest import make_settings
from tests.support.models import SlowModel
from tests.support.sentinel import Node, SentinelGroup
from tests.support.workers import WorkerProcess


@pytest.fixture
def stopped_replica(sentinel_group: SentinelGroup) -> Iterator[Node]:
    """The replica, frozen (SIGSTOP): still connected as far as the master knows, silent."""
    replica = next(n for n in sentinel_group.nodes if n is not sentinel_group.master())
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        yield replica
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)


@pytest.mark.timeout(120)
def test_an_enqueue_no_replica_acknowledged_is_not_reported_as_accepted(
    sentinel_group: SentinelGroup, stopped_replica: Node
) -> None:
    settings = make_settings(
        sentinel_group.url, replica_acks=1, replica_ack_timeout=0.3, failover_wait=1.5
    )
    remote = RunnableK8s(bound=SlowModel(delay=0.01), settings=settings)
    with pytest.raises(NotReplicated, match="did not all acknowledge"):
        remote.submit("unconfirmed")
    assert stopped_replica.process is not None
    os.kill(stopped_replica.process.pid, signal.SIGCONT)
    run = remote.submit("confirmed")  # the replica caught up: accepted
    assert run.status().state == "queued"


@pytest.mark.timeout(180)
def test_a_worker_waits_for_a_replica_before_acknowledging_a_run(
    sentinel_group: SentinelGroup,
    stopped_replica: Node,
    logs_dir: Path,
    workers: list[WorkerProcess],
) -> None:
    settings = make_settings(sentinel_group.url)  # the producer does not wait here
    env = {"RUNNABLE_K8S_REPLICA_ACKS": "1", "RUNNABLE_K8S_REPLICA_ACK_TIMEOUT": "0.5"}
    worker = WorkerProcess(settings, logs_dir, concurrency=2, env=env, name="acks")
    workers.append(worker)
    worker.wait_ready(60)
    remote = RunnableK8s(bound=SlowModel(delay=0.01), settings=settings)
    assert remote.invoke("x").content == "echo: x"
    worker.wait_for_log("outcome not on 1 replica(s)", timeout=30)
