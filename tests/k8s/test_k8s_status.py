"""`cluster status`: replicas and conditions from a fake API, counts from a real Valkey."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from k8s_helpers import FakeKube, free_port

from runnable_k8s.cluster import kube
from runnable_k8s.cluster.cli import cluster
from runnable_k8s.cluster.status import format_status, read_cluster, read_queue
from runnable_k8s.errors import RunnableK8sError

NS = "agents"
DEPLOYMENT = {
    "kind": "Deployment",
    "spec": {"replicas": 3},
    "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
}


def _scaled(queue: str = "runnable-k8s", db: str = "0") -> dict[str, Any]:
    return {
        "kind": "ScaledObject",
        "spec": {
            "minReplicaCount": 0,
            "maxReplicaCount": 20,
            "triggers": [
                {
                    "type": "redis",
                    "name": "queued",
                    "metadata": {"listName": queue, "databaseIndex": db},
                },
                {
                    "type": "redis",
                    "name": "inflight",
                    "metadata": {"listName": "unacked", "databaseIndex": db},
                },
                {
                    "type": "redis",
                    "name": "pending",
                    "metadata": {"listName": f"rk8s:pending:{queue}", "databaseIndex": db},
                },
            ],
        },
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "ScaledObjectReady", "message": "ok"},
                {"type": "Active", "status": "True", "reason": "ScalerActive", "message": "busy"},
            ]
        },
    }


def _api(**scaled: str) -> FakeKube:
    return FakeKube(
        {
            ("Deployment", NS, "runnable-k8s-worker"): DEPLOYMENT,
            ("ScaledObject", NS, "runnable-k8s-worker"): _scaled(**scaled),
        }
    )


@pytest.fixture
def busy_redis(redis_server: str) -> Iterator[str]:
    with redis.Redis.from_url(redis_server) as client:
        client.flushdb()
        client.rpush("runnable-k8s", "a", "b", "c")
        client.rpush("runnable-k8s:high", "d")
        client.rpush("runnable-k8s:low", "e", "f")
        client.hset("unacked", mapping={"t1": "x", "t2": "y"})
        # Six queued runs (every priority) and one the broker lost: seven not yet started.
        client.zadd("rk8s:pending:runnable-k8s", {f"r{i}": i for i in range(7)})
        yield redis_server
        client.flushdb()


def test_read_queue_counts_the_lists_and_the_unacked_hash(busy_redis: str) -> None:
    queue = read_queue(busy_redis, "runnable-k8s")
    assert (queue.queued, queue.inflight, queue.pending, queue.database, queue.error) == (
        6,
        2,
        7,
        0,
        None,
    )


def test_read_queue_reports_an_unreachable_redis() -> None:
    queue = read_queue(f"redis://:x@127.0.0.1:{free_port()}/0", "q", timeout=1)
    assert queue.queued is None
    assert queue.error is not None and queue.error.startswith("cannot read Redis:")


def test_read_cluster_and_format() -> None:
    status = read_cluster(_api(), NS)
    text = format_status(status)
    assert "workers:    2/3 ready (3 running, 3 up to date, 2 available)" in text
    assert (
        "scaler:     0..20 replicas on list 'runnable-k8s' (db 0) + 'unacked' + its pending set"
        in text
    )
    assert "  Active=True ScalerActive: busy" in text


def test_read_cluster_without_the_deployment_is_an_error() -> None:
    with pytest.raises(RunnableK8sError, match="Deployment runnable-k8s-worker not found"):
        read_cluster(FakeKube(), NS)


def test_read_cluster_without_keda_warns() -> None:
    api = FakeKube(
        {("Deployment", NS, "runnable-k8s-worker"): DEPLOYMENT},
        missing_kinds=frozenset({"ScaledObject"}),
    )
    assert read_cluster(api, NS).warnings == ["KEDA is not installed: nothing scales the workers"]


def test_cli_status_shows_everything(busy_redis: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube, "connect", lambda **_: (_api(), NS))
    monkeypatch.setenv("RUNNABLE_K8S_REDIS_URL", busy_redis)
    monkeypatch.delenv("RUNNABLE_K8S_QUEUE", raising=False)
    result = CliRunner().invoke(cluster, ["status"])
    assert result.exit_code == 0, result.output
    assert (
        "queue:      6 queued, 2 in flight, 7 not yet started (list 'runnable-k8s', db 0)"
        in result.output
    )
    assert "warning" not in result.output


def test_cli_status_warns_when_local_settings_differ(
    busy_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube, "connect", lambda **_: (_api(db="1"), NS))
    monkeypatch.setenv("RUNNABLE_K8S_QUEUE", "reports")
    result = CliRunner().invoke(cluster, ["status", "--redis-url", busy_redis])
    assert result.exit_code == 0, result.output
    assert "the workers consume 'runnable-k8s', but RUNNABLE_K8S_QUEUE here is 'reports'" in (
        result.output
    )
    assert "KEDA reads database 1, this URL database 0" in result.output


def test_cli_status_with_unreachable_redis_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube, "connect", lambda **_: (_api(), NS))
    url = f"redis://:x@127.0.0.1:{free_port()}/0"
    result = CliRunner().invoke(cluster, ["status", "--redis-url", url])
    assert result.exit_code == 1
    assert "queue:      'runnable-k8s' (db 0): cannot read Redis:" in result.output
    assert result.output.strip().endswith("Error: status incomplete (see above)")


def test_cli_status_without_deployment_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube, "connect", lambda **_: (FakeKube(), "default"))
    result = CliRunner().invoke(cluster, ["status"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: Deployment runnable-k8s-worker not found in namespace default: deploy first, "
        "or pass --namespace"
    )
