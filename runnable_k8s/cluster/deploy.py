"""Apply rendered manifests with server-side apply, in dependency order."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from runnable_k8s.cluster.checks import external_secrets, find
from runnable_k8s.cluster.kube import KubeApi
from runnable_k8s.cluster.manifests import Manifest
from runnable_k8s.errors import ConfigurationError, RunnableK8sError

# Things referred to come before the things referring to them; the ScaledObject last, so
# KEDA never sees a target that does not exist yet.
_ORDER = (
    "Namespace",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "Service",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Deployment",
    "StatefulSet",
    "TriggerAuthentication",
    "ScaledObject",
)
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


@dataclass(frozen=True)
class Applied:
    """One object sent to the server."""

    kind: str
    name: str
    namespace: str


def plan(objects: Sequence[Manifest], namespace: str) -> list[Manifest]:
    """The objects exactly as `deploy` sends them: namespaced and in apply order."""

    def rank(obj: Manifest) -> int:
        kind = str(obj.get("kind"))
        return _ORDER.index(kind) if kind in _ORDER else len(_ORDER)

    result = []
    for obj in sorted(objects, key=rank):
        item = copy.deepcopy(obj)
        if item["kind"] not in _CLUSTER_SCOPED:
            item["metadata"]["namespace"] = namespace
        result.append(item)
    return result


def missing_secrets(api: KubeApi, objects: Sequence[Manifest], namespace: str) -> list[str]:
    """External Secrets (see `checks.EXTERNAL_SECRETS_ANNOTATION`) absent from the namespace."""
    return [
        name
        for name in external_secrets(objects)
        if find(objects, "Secret", name) is None
        and api.get("v1", "Secret", name, namespace) is None
    ]


def deploy(
    api: KubeApi, objects: Sequence[Manifest], *, namespace: str, dry_run: bool = False
) -> list[Applied]:
    """Server-side apply every object (field manager `runnable-k8s`, conflicts forced).

    Checks first that the cluster serves every kind (KEDA installed) and that the Secrets
    created by hand exist, so a half-applied release is unlikely.

    Args:
        api: the cluster.
        objects: rendered manifests (`manifests.render`).
        namespace: target namespace for every namespaced object.
        dry_run: the server validates and answers, but persists nothing.

    Returns:
        What was applied, in order.

    Raises:
        ConfigurationError: a kind is unknown to the cluster or a Secret is missing.
        RunnableK8sError: the API refused or could not be reached.
    """
    ordered = plan(objects, namespace)
    unknown = sorted(
        {
            f"{obj['kind']} ({obj['apiVersion']})"
            for obj in ordered
            if not api.knows(obj["apiVersion"], obj["kind"])
        }
    )
    if unknown:
        hint = " (install KEDA first)" if any("keda.sh" in u for u in unknown) else ""
        raise ConfigurationError(f"the cluster does not serve {', '.join(unknown)}{hint}")
    missing = missing_secrets(api, objects, namespace)
    if missing:
        raise ConfigurationError(
            f"missing Secret(s) in namespace {namespace}: {', '.join(missing)} "
            "(see the README, 'Deploy to Kubernetes', 'Create the Secrets')"
        )
    applied: list[Applied] = []
    for obj in ordered:
        try:
            api.apply(obj, namespace=namespace, dry_run=dry_run)
        except RunnableK8sError as exc:
            done = f" after applying {len(applied)} object(s)" if applied else ""
            raise RunnableK8sError(f"{exc}{done}") from exc
        applied.append(Applied(obj["kind"], obj["metadata"]["name"], namespace))
    return applied
