"""components/sentinel: the worker's URL names every sentinel and the master, every trigger
is `redis-sentinel` with the same sentinels, master, database and TLS, the workers may reach
the sentinels, and the cross-checks catch a trigger that drifts."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from k8s_helpers import K8S

from runnable_k8s import connections
from runnable_k8s.cluster import manifests
from runnable_k8s.cluster.checks import find, find_problems, pod_environment, worker_container

SETS = {
    "SENTINEL_SCHEME": "sentinels",
    "SENTINEL_ADDRESSES": "s-0.sentinel:26379,s-1.sentinel:26379,s-2.sentinel:26379",
    "SENTINEL_MASTER": "agents",
    "REDIS_DB": "2",
}


@pytest.fixture(scope="module")
def sentinel_objects(kubectl: str) -> list[dict[str, Any]]:
    return manifests.render(
        "production", extra_components=["sentinel"], sets=SETS, root=K8S, kubectl=kubectl
    )


def test_the_worker_url_lists_every_sentinel_and_the_master(
    sentinel_objects: list[dict[str, Any]],
) -> None:
    deployment = find(sentinel_objects, "Deployment", manifests.WORKER)
    assert deployment is not None
    env = pod_environment(sentinel_objects, worker_container(deployment))
    target = connections.parse_sentinel(env["RUNNABLE_K8S_REDIS_URL"])
    assert target.sentinels == (
        ("s-0.sentinel", 26379),
        ("s-1.sentinel", 26379),
        ("s-2.sentinel", 26379),
    )
    assert (target.master_name, target.db, target.tls) == ("agents", 2, True)
    assert env["RUNNABLE_K8S_REPLICA_ACKS"] == "1"


def test_every_trigger_asks_the_sentinels(sentinel_objects: list[dict[str, Any]]) -> None:
    scaled = find(sentinel_objects, "ScaledObject", manifests.WORKER)
    assert scaled is not None
    triggers = scaled["spec"]["triggers"]
    assert [t["type"] for t in triggers] == ["redis-sentinel"] * 6
    for trigger in triggers:
        meta = trigger["metadata"]
        assert "host" not in meta and "port" not in meta
        assert meta["addresses"] == SETS["SENTINEL_ADDRESSES"]
        assert (meta["sentinelMaster"], meta["databaseIndex"], meta["enableTLS"]) == (
            "agents",
            "2",
            "true",
        )
    assert find_problems(sentinel_objects) == []


def test_workers_may_reach_the_sentinels(sentinel_objects: list[dict[str, Any]]) -> None:
    policy = find(sentinel_objects, "NetworkPolicy", manifests.WORKER)
    assert policy is not None
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {26379, 6380} <= ports  # the sentinels and the data nodes


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("addresses", "s-0.sentinel:26379", "asks the sentinels"),
        ("sentinelMaster", "other", "sentinelMaster 'other'"),
        ("enableTLS", "false", "enableTLS=false"),
        ("databaseIndex", "0", "reads database 0"),
    ],
)
def test_a_trigger_that_drifts_is_named(
    sentinel_objects: list[dict[str, Any]], field: str, value: str, problem: str
) -> None:
    objects = copy.deepcopy(sentinel_objects)
    scaled = find(objects, "ScaledObject", manifests.WORKER)
    assert scaled is not None
    scaled["spec"]["triggers"][1]["metadata"][field] = value
    found = find_problems(objects)
    assert len(found) == 1 and "'inflight'" in found[0] and problem in found[0], found


def test_a_plain_redis_trigger_with_a_sentinel_url_is_named(
    sentinel_objects: list[dict[str, Any]],
) -> None:
    objects = copy.deepcopy(sentinel_objects)
    scaled = find(objects, "ScaledObject", manifests.WORKER)
    assert scaled is not None
    scaled["spec"]["triggers"][0]["type"] = "redis"
    assert any(
        "is a redis trigger, but the broker URL is sentinel://" in p for p in find_problems(objects)
    )
