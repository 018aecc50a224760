"""Cross-checks: the rendered overlays agree, and each kind of drift is caught."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from k8s_helpers import K8S

from runnable_k8s.cluster import manifests
from runnable_k8s.cluster.checks import (
    assert_consistent,
    expand,
    find,
    find_problems,
    pod_environment,
    worker_container,
)
from runnable_k8s.errors import ConfigurationError

Objects = list[dict[str, Any]]


def _scaled(objects: Objects) -> dict[str, Any]:
    found = find(objects, "ScaledObject", manifests.WORKER)
    assert found is not None
    return found


def _pod(objects: Objects) -> dict[str, Any]:
    found = find(objects, "Deployment", manifests.WORKER)
    assert found is not None
    spec: dict[str, Any] = found["spec"]["template"]["spec"]
    return spec


def _config(objects: Objects) -> dict[str, str]:
    return dict(next(o for o in objects if o["kind"] == "ConfigMap")["data"])


def _trigger(objects: Objects, name: str) -> dict[str, Any]:
    trigger: dict[str, Any] = next(
        t for t in _scaled(objects)["spec"]["triggers"] if t["name"] == name
    )
    return trigger


@pytest.mark.parametrize("overlay", manifests.overlays(K8S))
def test_every_overlay_is_consistent(rendered: dict[str, Objects], overlay: str) -> None:
    assert find_problems(rendered[overlay]) == []
    assert_consistent(rendered[overlay])


def test_worker_environment_is_expanded_like_kubelet(dev: Objects) -> None:
    deployment = find(dev, "Deployment", manifests.WORKER)
    assert deployment is not None
    env = pod_environment(dev, worker_container(deployment))
    assert env["RUNNABLE_K8S_REDIS_URL"].startswith("redis://:secret-value-")
    assert env["RUNNABLE_K8S_REDIS_URL"].endswith("@redis:6379/0")
    assert env["RUNNABLE_K8S_QUEUE"] == "runnable-k8s"
    assert expand("$(A)-$(B)-$$(A)", {"A": "1"}) == "1-$(B)-$(A)"


def _rename_queue_trigger(objects: Objects) -> None:
    _trigger(objects, "queued")["metadata"]["listName"] = "celery"


def _rename_signing_secret(objects: Objects) -> None:
    for item in worker_container(find(objects, "Deployment", manifests.WORKER) or {})["env"]:
        if item["name"] == "RUNNABLE_K8S_SIGNING_KEY":
            item["valueFrom"]["secretKeyRef"]["name"] = "signing-key-typo"


def _drop_config_map(objects: Objects) -> None:
    objects.remove(next(o for o in objects if o["kind"] == "ConfigMap"))


def _short_grace(objects: Objects) -> None:
    _pod(objects)["terminationGracePeriodSeconds"] = 600


def _short_visibility(objects: Objects) -> None:
    next(o for o in objects if o["kind"] == "ConfigMap")["data"][
        "RUNNABLE_K8S_VISIBILITY_TIMEOUT"
    ] = "600"


def _other_database(objects: Objects) -> None:
    _trigger(objects, "inflight")["metadata"]["databaseIndex"] = "1"


def _broker_database(objects: Objects) -> None:
    next(o for o in objects if o["kind"] == "ConfigMap")["data"]["REDIS_DB"] = "2"


def _no_tls(objects: Objects) -> None:
    _trigger(objects, "queued")["metadata"]["enableTLS"] = "true"


def _drop_inflight(objects: Objects) -> None:
    spec = _scaled(objects)["spec"]
    spec["triggers"] = [t for t in spec["triggers"] if t["name"] != "inflight"]
    spec["advanced"]["scalingModifiers"]["formula"] = "queued"


def _formula_without_inflight(objects: Objects) -> None:
    _scaled(objects)["spec"]["advanced"]["scalingModifiers"]["formula"] = (
        "high + queued + low + pending / 100"
    )


def _missing_trigger_auth(objects: Objects) -> None:
    objects.remove(next(o for o in objects if o["kind"] == "TriggerAuthentication"))


def _other_host(objects: Objects) -> None:
    _trigger(objects, "queued")["metadata"]["host"] = "redis.other"


def _drop_pending(objects: Objects) -> None:
    """Without the pending set's trigger only the cooldown keeps a worker up for a lost run."""
    spec = _scaled(objects)["spec"]
    spec["triggers"] = [t for t in spec["triggers"] if t["name"] != "pending"]
    formula = "waiting > 0 && inflight > 0 ? inflight : high + queued + low + inflight"
    spec["advanced"]["scalingModifiers"]["formula"] = formula


def _short_cooldown(objects: Objects) -> None:
    _drop_pending(objects)
    _scaled(objects)["spec"]["cooldownPeriod"] = 90  # RESCUE_AFTER 60 + a 15 s sweep + 15 s poll


def _text_cooldown(objects: Objects) -> None:
    _drop_pending(objects)
    _scaled(objects)["spec"]["cooldownPeriod"] = "300"


def _late_rescue(objects: Objects) -> None:
    _drop_pending(objects)
    next(o for o in objects if o["kind"] == "ConfigMap")["data"]["RUNNABLE_K8S_RESCUE_AFTER"] = (
        "290"
    )


def _pending_of_another_queue(objects: Objects) -> None:
    _trigger(objects, "pending")["metadata"]["listName"] = "rk8s:pending:celery"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_short_cooldown, "cooldownPeriod (90) must be above RUNNABLE_K8S_RESCUE_AFTER (60) plus"),
        (_late_rescue, "cooldownPeriod (300) must be above RUNNABLE_K8S_RESCUE_AFTER (290) plus"),
        (_text_cooldown, "cooldownPeriod and pollingInterval must be numbers"),
        (_pending_of_another_queue, "trigger 'pending' counts Redis key 'rk8s:pending:celery'"),
        (_rename_queue_trigger, "trigger 'queued' counts Redis key 'celery', but the workers"),
        (_rename_signing_secret, "refers to Secret signing-key-typo, which is neither"),
        (_drop_config_map, "refers to ConfigMap runnable-k8s-config-"),
        (_short_grace, "terminationGracePeriodSeconds (600) must be above"),
        (_short_visibility, "RUNNABLE_K8S_VISIBILITY_TIMEOUT (600) must be above"),
        (
            _other_database,
            "trigger 'inflight' reads database 1, but the broker URL uses database 0",
        ),
        (_broker_database, "trigger 'queued' reads database 0, but the broker URL uses database 2"),
        (_no_tls, "enableTLS=true, but the broker URL scheme is redis://"),
        (_drop_inflight, "no redis trigger counts 'unacked'"),
        (_formula_without_inflight, "not in it: 'inflight'"),
        (_missing_trigger_auth, "uses TriggerAuthentication runnable-k8s-redis, which is missing"),
        (_other_host, "connects to redis.other:6379, but the broker URL points at redis:6379"),
    ],
)
def test_drift_is_caught(dev: Objects, mutate: Callable[[Objects], None], expected: str) -> None:
    mutate(dev)
    problems = find_problems(dev)
    assert any(expected in p for p in problems), problems
    with pytest.raises(ConfigurationError, match="contradict"):
        assert_consistent(dev)


def test_a_cooldown_just_above_the_rescue_window_passes(dev: Objects) -> None:
    _drop_pending(dev)
    _scaled(dev)["spec"]["cooldownPeriod"] = 91
    assert find_problems(dev) == []


def test_the_cooldown_is_checked_even_when_other_settings_are_invalid(dev: Objects) -> None:
    _late_rescue(dev)
    _short_visibility(dev)
    problems = find_problems(dev)
    assert any("RUNNABLE_K8S_VISIBILITY_TIMEOUT (600) must be above" in p for p in problems)
    assert any("RUNNABLE_K8S_RESCUE_AFTER (290)" in p for p in problems), problems


def test_with_the_pending_trigger_any_cooldown_passes(dev: Objects) -> None:
    _scaled(dev)["spec"]["cooldownPeriod"] = 1
    assert find_problems(dev) == []


def test_the_cooldown_does_not_matter_with_a_replica_always_up(dev: Objects) -> None:
    _short_cooldown(dev)
    _scaled(dev)["spec"]["minReplicaCount"] = 1
    assert find_problems(dev) == []


def test_a_secret_generated_by_the_overlay_needs_no_declaration(dev: Objects) -> None:
    # dev generates runnable-k8s-redis; drop it from the declared list: still fine.
    deployment = find(dev, "Deployment", manifests.WORKER)
    assert deployment is not None
    deployment["metadata"]["annotations"]["runnable-k8s.dev/external-secrets"] = (
        "runnable-k8s-signing-key,runnable-k8s-model-keys"
    )
    assert find_problems(dev) == []


def test_an_overlay_that_forgets_the_wiring_component_is_caught(
    tmp_path: Path, kubectl: str
) -> None:
    """Built from a broken copy: the overlay moves the broker to db 3 but does not list
    components/single-source, so the base's copies stay at db 0."""
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    kustomization = tree / "overlays" / "production" / "kustomization.yaml"
    text = kustomization.read_text()
    kustomization.write_text(text.replace("components:\n- ../../components/single-source\n", ""))
    config = tree / "overlays" / "production" / "config.env"
    config.write_text(config.read_text().replace("REDIS_DB=0", "REDIS_DB=3"))
    objects = manifests.render("production", root=tree, kubectl=kubectl)
    problems = find_problems(objects)
    assert "trigger 'queued' reads database 0, but the broker URL uses database 3" in problems
    assert any("connects to redis:6379" in p for p in problems)


def test_an_overlay_that_renames_the_queue_stays_consistent(tmp_path: Path, kubectl: str) -> None:
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    config = tree / "overlays" / "dev" / "config.env"
    config.write_text(config.read_text() + "RUNNABLE_K8S_QUEUE=reports\n")
    objects = manifests.render("dev", root=tree, kubectl=kubectl)
    assert _trigger(objects, "queued")["metadata"]["listName"] == "reports"
    assert find_problems(objects) == []


def _probe(objects: Objects, name: str) -> list[str]:
    return list(
        worker_container(find(objects, "Deployment", manifests.WORKER) or {})[name]["exec"][
            "command"
        ]
    )


@pytest.mark.parametrize(
    ("probe", "suffix", "max_age"),
    [("livenessProbe", "", 60), ("startupProbe", "", 60), ("readinessProbe", ".ready", 20)],
)
def test_probe_commands_check_heartbeat_age(
    dev: Objects, tmp_path: Path, probe: str, suffix: str, max_age: int
) -> None:
    """Runs the probe's shell command for real against fresh, stale and missing files."""
    heartbeat = tmp_path / "heartbeat"
    env = {"PATH": os.environ["PATH"], "RUNNABLE_K8S_HEARTBEAT_FILE": str(heartbeat)}
    command = _probe(dev, probe)

    def run() -> int:
        done = subprocess.run(command, env=env, capture_output=True, check=False)
        return done.returncode

    assert run() != 0, "missing file must fail"
    target = Path(str(heartbeat) + suffix)
    target.touch()
    assert run() == 0
    old = time.time() - max_age - 5
    os.utime(target, (old, old))
    assert run() != 0, "stale file must fail"
