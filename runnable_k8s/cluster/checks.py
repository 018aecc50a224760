"""Cross-checks of rendered manifests: the worker, KEDA and the pod spec must agree.

kustomize copies shared values from one ConfigMap, but a hand edit, a forgotten component
or an overlay patch can still make them drift. These checks read the objects as the
cluster would see them (the worker's environment as kubelet expands it) and name every
contradiction. `manifests` and `deploy` refuse output with problems; the tests use them too.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from runnable_k8s import connections, keda
from runnable_k8s.cluster import sentinel_checks
from runnable_k8s.cluster.manifests import WORKER, WORKER_CONTAINER, Manifest
from runnable_k8s.errors import ConfigurationError
from runnable_k8s.protocol import priority
from runnable_k8s.settings import ENV_PREFIX, Settings
from runnable_k8s.store import keys

EXTERNAL_SECRETS_ANNOTATION = "runnable-k8s.dev/external-secrets"
"""Comma-separated Secrets created outside the manifests (by hand or by a secret manager)."""

# Long enough to pass the signing key length check; never a real value.
_SECRET_PLACEHOLDER = "secret-value-not-known-offline-" + "0" * 16
_REDIS_TRIGGERS = {"redis", "redis-sentinel"}
_POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def find(objects: Sequence[Manifest], kind: str, name: str) -> Manifest | None:
    """The object of this kind and name, or None."""
    for obj in objects:
        if obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name:
            return obj
    return None


def worker_container(deployment: Manifest) -> dict[str, Any]:
    """The `worker` container of the worker Deployment.

    Raises:
        ConfigurationError: there is none.
    """
    for container in deployment["spec"]["template"]["spec"].get("containers", []):
        if container.get("name") == WORKER_CONTAINER:
            return dict(container)
    raise ConfigurationError(f"Deployment {WORKER} has no container named {WORKER_CONTAINER!r}")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Expand `$(VAR)` like kubelet: unknown references stay as written, `$$` is `$`."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(substitute, value)


def pod_environment(objects: Sequence[Manifest], container: Mapping[str, Any]) -> dict[str, str]:
    """The container's environment as kubelet builds it from the manifests (ConfigMap
    references, `$(VAR)` expansion); Secret values become placeholders. (`dev` starts its
    workers with `keda.worker_environment`, from the same ConfigMap values.)"""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        ref = source.get("configMapRef")
        if ref:
            config = find(objects, "ConfigMap", ref["name"]) or {}
            for key, value in (config.get("data") or {}).items():
                env[prefix + key] = str(value)
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            config = find(objects, "ConfigMap", ref["name"]) or {}
            if ref["key"] in (config.get("data") or {}):
                env[name] = str(config["data"][ref["key"]])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[name] = _SECRET_PLACEHOLDER
    return env


def _pod_specs(objects: Sequence[Manifest]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj.get("kind") in _POD_KINDS:
            yield f"{obj['kind']} {obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def _references(objects: Sequence[Manifest]) -> Iterator[tuple[str, str, str]]:
    """(where, kind, name) of every non-optional Secret and ConfigMap reference."""
    for where, spec in _pod_specs(objects):
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            for source in container.get("envFrom", []):
                for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    ref = source.get(field)
                    if ref and not ref.get("optional"):
                        yield where, kind, ref["name"]
            for item in container.get("env", []):
                value_from = item.get("valueFrom", {})
                for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                    ref = value_from.get(field)
                    if ref and not ref.get("optional"):
                        yield where, kind, ref["name"]
        for volume in spec.get("volumes", []):
            if "secret" in volume and not volume["secret"].get("optional"):
                yield where, "Secret", volume["secret"]["secretName"]
            if "configMap" in volume and not volume["configMap"].get("optional"):
                yield where, "ConfigMap", volume["configMap"]["name"]
    for obj in objects:
        if obj.get("kind") == "TriggerAuthentication":
            for ref in obj["spec"].get("secretTargetRef", []):
                yield f"TriggerAuthentication {obj['metadata']['name']}", "Secret", ref["name"]


def external_secrets(objects: Sequence[Manifest]) -> list[str]:
    """Secrets the manifests expect to exist already (the worker's annotation)."""
    deployment = find(objects, "Deployment", WORKER) or {}
    raw = deployment.get("metadata", {}).get("annotations", {}).get(EXTERNAL_SECRETS_ANNOTATION, "")
    return [name.strip() for name in raw.split(",") if name.strip()]


def find_problems(objects: Sequence[Manifest]) -> list[str]:
    """Every contradiction between the worker's settings, its pod spec and its autoscaler.

    Returns:
        Human-readable problems; empty when the manifests agree.
    """
    deployment = find(objects, "Deployment", WORKER)
    if deployment is None:
        return [f"no Deployment {WORKER}"]
    problems = _missing_references(objects)
    try:
        container = worker_container(deployment)
    except ConfigurationError as exc:
        return [*problems, str(exc)]
    env = pod_environment(objects, container)
    settings, problem = _settings(env)
    if problem:
        problems.append(problem)

    grace = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    if grace <= settings.time_limit:
        problems.append(
            f"terminationGracePeriodSeconds ({grace}) must be above RUNNABLE_K8S_TIME_LIMIT "
            f"({settings.time_limit:g}), or scale-down kills runs in progress"
        )
    scaled = find(objects, "ScaledObject", WORKER)
    if scaled is None:
        problems.append(f"no ScaledObject {WORKER}")
    else:
        problems += _scaler_problems(objects, scaled, settings, env)
    return problems


def assert_consistent(objects: Sequence[Manifest]) -> None:
    """Raise if `find_problems` finds anything.

    Raises:
        ConfigurationError: listing every problem.
    """
    problems = find_problems(objects)
    if problems:
        raise ConfigurationError(
            "the manifests contradict themselves:\n  - " + "\n  - ".join(problems)
        )


def _missing_references(objects: Sequence[Manifest]) -> list[str]:
    problems = []
    external = set(external_secrets(objects))
    for where, kind, name in _references(objects):
        if find(objects, kind, name) is None and not (kind == "Secret" and name in external):
            problems.append(
                f"{where} refers to {kind} {name}, which is neither in the manifests nor "
                f"declared in the annotation {EXTERNAL_SECRETS_ANNOTATION}"
            )
    return sorted(set(problems))


def _settings(env: Mapping[str, str]) -> tuple[Settings, str | None]:
    """The worker's settings, and the first problem with them (if any)."""
    raw = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    try:
        return Settings.from_env(raw), None
    except ConfigurationError as exc:
        problem = f"worker settings: {exc}"
    # Unvalidated, so the remaining checks can still run on what is there.
    fields: dict[str, Any] = {}
    for name, kind in (
        ("queue", str),
        ("time_limit", float),
        ("visibility_timeout", float),
        ("rescue_after", float),
    ):
        value = raw.get(ENV_PREFIX + name.upper())
        if value is not None:
            with contextlib.suppress(ValueError):
                fields[name] = kind(value)
    fields["redis_url"] = raw.get(ENV_PREFIX + "REDIS_URL")
    settings = Settings(**fields)
    if settings.effective_visibility_timeout <= settings.time_limit:
        problem = (
            f"RUNNABLE_K8S_VISIBILITY_TIMEOUT ({settings.effective_visibility_timeout:g}) must "
            f"be above RUNNABLE_K8S_TIME_LIMIT ({settings.time_limit:g}), or long runs are "
            "delivered twice"
        )
    return settings, problem


def _scaler_problems(
    objects: Sequence[Manifest],
    scaled: Manifest,
    settings: Settings,
    env: Mapping[str, str],
) -> list[str]:
    problems = []
    spec = scaled["spec"]
    target = spec.get("scaleTargetRef", {})
    if target.get("name") != WORKER or target.get("kind", "Deployment") != "Deployment":
        problems.append(f"ScaledObject {WORKER} does not target Deployment {WORKER}")
    triggers = [t for t in spec.get("triggers", []) if t.get("type") in _REDIS_TRIGGERS]
    names = [str(t["metadata"].get("listName", "")) for t in triggers]
    for trigger, list_name in zip(triggers, names, strict=True):
        label = f"trigger {trigger.get('name', '?')!r}"
        if list_name not in keda.trigger_keys(settings.queue).values():
            problems.append(
                f"{label} counts Redis key {list_name!r}, but the workers consume "
                f"{settings.queue!r} (RUNNABLE_K8S_QUEUE)"
            )
        if trigger["type"] == sentinel_checks.TRIGGER or connections.is_sentinel(
            settings.redis_url or ""
        ):
            url = settings.redis_url or ""
            problems += sentinel_checks.problems(label, trigger["type"], trigger["metadata"], url)
        else:
            problems += _connection_problems(label, trigger["metadata"], settings, env)
        auth = trigger.get("authenticationRef", {}).get("name")
        if (
            auth
            and find(
                objects, trigger["authenticationRef"].get("kind", "TriggerAuthentication"), auth
            )
            is None
        ):
            problems.append(f"{label} uses TriggerAuthentication {auth}, which is missing")
    for level, list_name in priority.lists(settings.queue).items():
        if list_name not in names:
            problems.append(f"no redis trigger counts the {level} priority list {list_name!r}")
    if keys.UNACKED not in names:
        problems.append(
            f"no redis trigger counts {keys.UNACKED!r}: busy workers would be scaled away"
        )
    problems += _cooldown_problems(spec, settings, keys.pending(settings.queue) in names)
    modifiers = spec.get("advanced", {}).get("scalingModifiers", {})
    formula = str(modifiers.get("formula", ""))
    missing = [t.get("name", "") for t in triggers if t.get("name", "") not in formula]
    if len(triggers) > 1 and (not formula or missing):
        problems.append(
            "advanced.scalingModifiers.formula must combine every trigger by name (e.g. "
            "'high + queued + low + inflight + pending / 100'); not in it: "
            + ", ".join(map(repr, missing))
        )
    if formula and modifiers.get("target") != str(settings.concurrency):
        problems.append(
            f"scalingModifiers.target ({modifiers.get('target')}) differs from "
            f"RUNNABLE_K8S_CONCURRENCY ({settings.concurrency})"
        )
    return problems


def _cooldown_problems(
    spec: Mapping[str, Any], settings: Settings, counts_pending: bool
) -> list[str]:
    # KEDA's defaults.
    raw = {k: spec.get(k, d) for k, d in (("cooldownPeriod", 300), ("pollingInterval", 30))}
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw.values()):
        return [f"cooldownPeriod and pollingInterval must be numbers, not {raw}"]
    problem = cooldown_problem(
        raw["cooldownPeriod"],
        raw["pollingInterval"],
        settings,
        min_replicas=spec.get("minReplicaCount", 0),
        counts_pending=counts_pending,
    )
    return [problem] if problem else []


def cooldown_problem(
    cooldown: float,
    polling: float,
    settings: Settings,
    *,
    min_replicas: int = 0,
    counts_pending: bool = False,
) -> str | None:
    """Why a cooldownPeriod of `cooldown` seconds is too short for these settings (None: it
    is not). A message the broker lost is neither queued nor in flight; unless a trigger
    counts the pending set (or a replica always stays), the last worker must stay up until it
    has been enqueued again, and the cooldown counts from the last poll that saw work, which
    can be a polling interval before the run was submitted."""
    needed = settings.rescue_within + polling
    if counts_pending or min_replicas != 0 or cooldown > needed:
        return None
    return (
        f"cooldownPeriod ({cooldown:g}) must be above RUNNABLE_K8S_RESCUE_AFTER "
        f"({settings.rescue_after:g}) plus one rescue sweep ({settings.rescue_every:g}) plus "
        f"pollingInterval ({polling:g}), {needed:g} s: a message the broker lost is counted by "
        "no trigger, and the last worker could be scaled away before enqueuing it again"
    )


def _connection_problems(
    label: str, metadata: Mapping[str, Any], settings: Settings, env: Mapping[str, str]
) -> list[str]:
    if not settings.redis_url:
        return [f"the worker has no RUNNABLE_K8S_REDIS_URL to compare {label} with"]
    problems = []
    url = urlsplit(settings.redis_url)
    index = str(metadata.get("databaseIndex", "0"))
    if index != str(settings.redis_db):
        problems.append(
            f"{label} reads database {index}, but the broker URL uses database {settings.redis_db}"
        )
    tls = str(metadata.get("enableTLS", "false")).lower() == "true"
    if tls != (url.scheme == "rediss"):
        problems.append(
            f"{label} has enableTLS={str(tls).lower()}, but the broker URL scheme is "
            f"{url.scheme}://"
        )
    host = metadata.get("host") or env.get(str(metadata.get("hostFromEnv", "")))
    port = metadata.get("port") or env.get(str(metadata.get("portFromEnv", "")))
    if "address" in metadata:
        host, _, port = str(metadata["address"]).rpartition(":")
    if (host, str(port or 6379)) != (url.hostname, str(url.port or 6379)):
        problems.append(
            f"{label} connects to {host}:{port}, but the broker URL points at "
            f"{url.hostname}:{url.port or 6379}"
        )
    return problems
