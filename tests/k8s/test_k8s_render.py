"""The kustomize tree builds, and `--set` values reach every place that copies them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from k8s_helpers import K8S

from runnable_k8s.cluster import manifests
from runnable_k8s.cluster.checks import find, worker_container
from runnable_k8s.cluster.cli import cluster
from runnable_k8s.errors import ConfigurationError, RunnableK8sError

OVERLAYS = manifests.overlays(K8S)
CORE = {
    "ServiceAccount",
    "ConfigMap",
    "Deployment",
    "TriggerAuthentication",
    "ScaledObject",
    "NetworkPolicy",
    "PodDisruptionBudget",
}


def test_the_overlays_are_dev_and_production() -> None:
    assert OVERLAYS == ["dev", "production"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_kustomize_builds_every_overlay(kubectl: str, overlay: str) -> None:
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(done.stdout) if doc}
    assert kinds >= CORE


def test_kubectl_kustomize_builds_the_base_and_the_servicemonitor_component(
    kubectl: str,
) -> None:
    base = manifests.build(K8S / "base", kubectl=kubectl)
    assert {o["kind"] for o in base} == CORE
    with_monitor = manifests.render(
        "production", extra_components=["servicemonitor"], root=K8S, kubectl=kubectl
    )
    kinds = [o["kind"] for o in with_monitor]
    assert "ServiceMonitor" in kinds
    assert "Service" in kinds


def test_dev_runs_its_own_redis_with_a_password_and_noeviction(
    dev: list[dict[str, Any]],
) -> None:
    redis = find(dev, "Deployment", "redis")
    assert redis is not None
    container = redis["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert find(dev, "Service", "redis") is not None
    assert find(dev, "Secret", "runnable-k8s-redis") is not None


def test_production_uses_tls_and_brings_no_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    production = rendered["production"]
    assert not [o for o in production if o["kind"] == "Secret"]
    config = next(o for o in production if o["kind"] == "ConfigMap")
    assert config["data"]["REDIS_SCHEME"] == "rediss"
    scaled = find(production, "ScaledObject", manifests.WORKER)
    assert scaled is not None
    assert {t["metadata"]["enableTLS"] for t in scaled["spec"]["triggers"]} == {"true"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_set_changes_every_copy_of_a_value(kubectl: str, overlay: str) -> None:
    objects = manifests.render(
        overlay,
        sets={
            "RUNNABLE_K8S_QUEUE": "reports",
            "REDIS_DB": "3",
            "RUNNABLE_K8S_CONCURRENCY": "20",
            "RUNNABLE_K8S_TIME_LIMIT": "1200",
            "RUNNABLE_K8S_VISIBILITY_TIMEOUT": "1500",
            "TERMINATION_GRACE_PERIOD_SECONDS": "1260",
        },
        root=K8S,
        kubectl=kubectl,
    )
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    assert config["data"]["RUNNABLE_K8S_QUEUE"] == "reports"
    scaled = find(objects, "ScaledObject", manifests.WORKER)
    assert scaled is not None
    triggers = {t["name"]: t["metadata"] for t in scaled["spec"]["triggers"]}
    assert triggers["queued"]["listName"] == "reports"
    assert triggers["inflight"]["listName"] == "unacked"
    assert triggers["pending"]["listName"] == "rk8s:pending:reports"
    assert {m["databaseIndex"] for m in triggers.values()} == {"3"}
    assert scaled["spec"]["advanced"]["scalingModifiers"]["target"] == "20"
    deployment = find(objects, "Deployment", manifests.WORKER)
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 1260
    # The generated ConfigMap's new name (content hash) is what the worker reads.
    refs = [
        s["configMapRef"]["name"]
        for s in worker_container(deployment)["envFrom"]
        if "configMapRef" in s
    ]
    assert refs == [config["metadata"]["name"]]


def test_a_queue_name_with_colons_reaches_the_pending_trigger_whole(kubectl: str) -> None:
    # The pending key is "rk8s:pending:<queue>"; kustomize replaces its third ':'-part.
    objects = manifests.render(
        "dev", sets={"RUNNABLE_K8S_QUEUE": "jobs:llm:eu"}, root=K8S, kubectl=kubectl
    )
    scaled = find(objects, "ScaledObject", manifests.WORKER)
    assert scaled is not None
    triggers = {t["name"]: t["metadata"] for t in scaled["spec"]["triggers"]}
    assert triggers["queued"]["listName"] == "jobs:llm:eu"
    assert triggers["pending"]["listName"] == "rk8s:pending:jobs:llm:eu"


def test_image_option_replaces_only_the_worker_image(kubectl: str) -> None:
    objects = manifests.render("dev", image="ghcr.io/acme/rk8s:1.2.3", root=K8S, kubectl=kubectl)
    deployment = find(objects, "Deployment", manifests.WORKER)
    redis = find(objects, "Deployment", "redis")
    assert deployment is not None and redis is not None
    assert worker_container(deployment)["image"] == "ghcr.io/acme/rk8s:1.2.3"
    assert "valkey" in redis["spec"]["template"]["spec"]["containers"][0]["image"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overlay": "staging"}, "unknown overlay 'staging'"),
        ({"extra_components": ["grafana"]}, "unknown component 'grafana'"),
        ({"sets": {"RUNNABLE_K8S_QUEU": "x"}}, "--set RUNNABLE_K8S_QUEU: unknown key"),
    ],
)
def test_render_refuses_unknown_names(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        manifests.render(root=K8S, **kwargs)


def test_parse_sets_rejects_malformed_pairs() -> None:
    with pytest.raises(ConfigurationError, match="KEY=VALUE"):
        manifests.parse_sets(["RUNNABLE_K8S_QUEUE"], ["RUNNABLE_K8S_QUEUE"])
    assert manifests.parse_sets(["A=b=c"], ["A"]) == {"A": "b=c"}


def test_a_kustomize_failure_is_one_clear_error(tmp_path: Path, kubectl: str) -> None:
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    (tree / "base" / "scaledobject.yaml").unlink()
    with pytest.raises(RunnableK8sError, match=r"kustomize build of .* failed: .*scaledobject"):
        manifests.render("dev", root=tree, kubectl=kubectl)


def test_the_packaged_tree_is_the_repository_tree() -> None:
    assert manifests.default_root().resolve() == K8S.resolve()


def test_cli_manifests_prints_what_render_returns(kubectl: str) -> None:
    result = CliRunner().invoke(
        cluster,
        [
            "manifests",
            "--overlay",
            "production",
            "--set",
            "RUNNABLE_K8S_QUEUE=reports",
            "--component",
            "servicemonitor",
        ],
    )
    assert result.exit_code == 0, result.output
    printed = [doc for doc in yaml.safe_load_all(result.output) if doc]
    expected = manifests.render(
        "production",
        sets={"RUNNABLE_K8S_QUEUE": "reports"},
        extra_components=["servicemonitor"],
        root=K8S,
        kubectl=kubectl,
    )
    assert printed == expected


def test_cli_manifests_refuses_contradictions_with_exit_code_1() -> None:
    result = CliRunner().invoke(cluster, ["manifests", "--set", "RUNNABLE_K8S_TIME_LIMIT=700"])
    assert result.exit_code == 1
    assert "terminationGracePeriodSeconds (660) must be above" in result.output
    assert "Traceback" not in result.output
