"""Every object is valid for current Kubernetes (strict) and KEDA (strict JSON Schemas),
and the worker pod has its security and health settings (non-root, read-only root, dropped
capabilities, probes)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from k8s_helpers import K8S, SCHEMAS, SHARED_SCHEMAS

from runnable_k8s.cluster import manifests
from runnable_k8s.cluster.checks import find, worker_container

KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# Operator CRDs without an offline schema here; checked by shape in their own test.
OTHER_CRDS = {"ServiceMonitor"}
SENTINEL_TLS = {"SENTINEL_SCHEME": "sentinels"}  # production's Redis speaks TLS
VENDORED_SCHEMAS = {"scaledobject.strict.json", "triggerauthentication.strict.json"}


def _all_variants(rendered: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    variants = [(name, obj) for name, objects in rendered.items() for obj in objects]
    extra = manifests.render("production", extra_components=["servicemonitor"], root=K8S)
    variants += [("production+servicemonitor", obj) for obj in extra]
    sentinel = manifests.render(
        "production", extra_components=["sentinel"], sets=SENTINEL_TLS, root=K8S
    )
    variants += [("production+sentinel", obj) for obj in sentinel]
    return variants


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_object_passes_strict_validation(
    rendered: dict[str, list[dict[str, Any]]], version: str
) -> None:
    checked = 0
    for variant, obj in _all_variants(rendered):
        if obj["kind"] in KEDA_KINDS | OTHER_CRDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{variant}: {obj['kind']} {obj['metadata']['name']}: {exc}")
        checked += 1
    assert checked >= 15


@pytest.mark.parametrize("overlay", manifests.overlays(K8S))
def test_kubernetes_validate_cli_strict_passes(tmp_path: Path, kubectl: str, overlay: str) -> None:
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    )
    core = [d for d in yaml.safe_load_all(built.stdout) if d and d["kind"] not in KEDA_KINDS]
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(core))
    done = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.33.0", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed for resource deployment/runnable-k8s-worker" in done.stdout + done.stderr


def test_every_keda_object_passes_the_strict_schema(
    rendered: dict[str, list[dict[str, Any]]], keda_schemas: dict[str, dict[str, Any]]
) -> None:
    seen = set()
    for variant, obj in _all_variants(rendered):
        if obj["kind"] not in KEDA_KINDS:
            continue
        validator = jsonschema.Draft7Validator(keda_schemas[obj["kind"].lower()])
        errors = [e.message for e in validator.iter_errors(obj)]
        assert not errors, f"{variant}: {obj['kind']}: {errors}"
        seen.add((variant, obj["kind"]))
    assert len(seen) == 8


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "cooldownPriod"), 300),  # typo: strict schemas reject unknown fields
        (("spec", "triggers", 0, "metadata", "listLength"), 5),  # must be a string
        (("apiVersion",), "keda.k8s.io/v1alpha1"),
    ],
)
def test_the_keda_schemas_do_reject_mistakes(
    dev: list[dict[str, Any]],
    keda_schemas: dict[str, dict[str, Any]],
    path: tuple[Any, ...],
    value: Any,
) -> None:
    scaled = find(dev, "ScaledObject", manifests.WORKER)
    assert scaled is not None
    node: Any = scaled
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(jsonschema.Draft7Validator(keda_schemas["scaledobject"]).iter_errors(scaled))


def test_vendored_schemas_match_shared_when_present() -> None:
    if not SHARED_SCHEMAS.is_dir():
        pytest.skip("no ../shared/schemas/keda beside the repository")
    assert {path.name for path in SCHEMAS.glob("*.json")} == VENDORED_SCHEMAS  # not vacuous
    for path in SCHEMAS.glob("*.json"):
        ours = hashlib.sha256(path.read_bytes()).hexdigest()
        theirs = hashlib.sha256((SHARED_SCHEMAS / path.name).read_bytes()).hexdigest()
        assert ours == theirs, path.name


def test_servicemonitor_selects_the_metrics_service(kubectl: str) -> None:
    objects = manifests.render("dev", extra_components=["servicemonitor"], root=K8S)
    monitor = find(objects, "ServiceMonitor", manifests.WORKER)
    service = find(objects, "Service", "runnable-k8s-worker-metrics")
    assert monitor is not None and service is not None
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = monitor["spec"]["selector"]["matchLabels"]
    assert labels.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


@pytest.mark.parametrize("overlay", manifests.overlays(K8S))
def test_worker_pod_is_locked_down(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    deployment = find(rendered[overlay], "Deployment", manifests.WORKER)
    assert deployment is not None
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = worker_container(deployment)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9100"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    assert container["args"] == ["worker"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RUNNABLE_K8S_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]["name"] == (
        "runnable-k8s-signing-key"
    )
    secret_sources = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
    assert secret_sources == ["runnable-k8s-model-keys"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["sh", "-c"], "no Python start per probe"
        assert "stat -c %Y" in command[2]


@pytest.mark.parametrize("overlay", manifests.overlays(K8S))
def test_scaler_policy_and_disruption_budget(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    scaled = find(objects, "ScaledObject", manifests.WORKER)
    assert scaled is not None
    spec = scaled["spec"]
    assert spec["minReplicaCount"] == 0
    assert spec["advanced"]["scalingModifiers"]["formula"] == (
        "waiting > 0 && inflight > 0 ? inflight : high + queued + low + inflight + pending / 100"
    )
    assert [t["name"] for t in spec["triggers"]] == [
        "queued",
        "inflight",
        "pending",
        "waiting",
        "high",
        "low",
    ]
    assert all(t["authenticationRef"]["name"] == "runnable-k8s-redis" for t in spec["triggers"])
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] >= 300
    auth = find(objects, "TriggerAuthentication", "runnable-k8s-redis")
    assert auth is not None
    assert auth["spec"]["secretTargetRef"][0]["parameter"] == "password"
    pdb = find(objects, "PodDisruptionBudget", manifests.WORKER)
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", manifests.overlays(K8S))
def test_network_policy_allows_only_dns_redis_and_https(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    policy = find(objects, "NetworkPolicy", manifests.WORKER)
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    assert policy is not None
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ports = sorted(
        (p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]
    )
    redis_port = int(config["data"]["REDIS_PORT"])
    assert ports == sorted([(53, "UDP"), (53, "TCP"), (redis_port, "TCP"), (443, "TCP")])
    if overlay == "dev":
        redis_rule = policy["spec"]["egress"][1]
        assert redis_rule["to"] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis"}}}
        ]


def test_json_of_schemas_is_loadable() -> None:
    assert {path.name for path in SCHEMAS.glob("*.json")} == VENDORED_SCHEMAS  # not vacuous
    for path in SCHEMAS.glob("*.json"):
        jsonschema.Draft7Validator.check_schema(json.loads(path.read_text()))
