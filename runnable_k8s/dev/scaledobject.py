"""Reading the ScaledObject from the kustomize files the cluster uses (`base/config.env` and the
ScaledObject, with the values `components/single-source` copies).

Every field KEDA or the HPA would act on is either modelled (`dev` decides on it as the cluster
does) or refused with a ConfigurationError: `dev` never accepts a field and then ignores it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runnable_k8s.dev.config import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    HPA_SYNC_PERIOD,
    Policy,
    Rules,
    ScalingConfig,
)
from runnable_k8s.errors import ConfigurationError
from runnable_k8s.keda import read_config_env

# Every field below is one `dev` models; anything else in these places is refused, because KEDA
# or the HPA would act on it and `dev` would not.
_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "minReplicaCount",
    "maxReplicaCount",
    "advanced",
    "triggers",
}
# restoreToOriginalReplicaCount acts only when the ScaledObject is deleted.
_ADVANCED = {"restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig", "scalingModifiers"}
_MODIFIERS = {"formula", "target", "activationTarget", "metricType"}
_HPA_CONFIG = {"name", "behavior"}
_BEHAVIOR = {"scaleUp", "scaleDown"}
_RULES = {"stabilizationWindowSeconds", "selectPolicy", "policies", "tolerance"}
_POLICY = {"type", "value", "periodSeconds"}
# useCachedMetrics only changes when the HPA's read reaches Redis; dev reads once per poll.
_TRIGGER = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
_REDIS_SCALING = {"listName", "listLength", "activationListLength"}
# Where KEDA connects: dev reads its own server instead, so these change no decision.
_REDIS_CONNECTION = {
    "address",
    "addresses",
    "host",
    "hosts",
    "port",
    "ports",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
    "username",
    "password",
    "addressFromEnv",
    "hostFromEnv",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    # redis-sentinel triggers (dev reaches Redis through RUNNABLE_K8S_REDIS_URL, not these).
    "sentinelMaster",
    "sentinelMasterFromEnv",
    "sentinelUsername",
    "sentinelUsernameFromEnv",
    "sentinelPassword",
    "sentinelPasswordFromEnv",
}
_TRIGGER_TYPES = ("redis", "redis-sentinel")
_KEDA_ANNOTATIONS = "autoscaling.keda.sh/"
"""paused, paused-replicas, paused-scale-in, paused-scale-out, force-activation
(apis/keda/v1alpha1/scaledobject_types.go): none is modelled."""


def _refuse_unknown(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigurationError(
            f"{where}: {', '.join(unknown)} not supported by runnable-k8s dev (it would decide "
            "differently from the cluster); remove it or test that behaviour in a cluster"
        )


def _average_value(raw: Mapping[str, Any], where: str) -> None:
    # metricType Value makes the HPA multiply by the ready pods (replica_calculator.go
    # GetExternalMetricReplicas); dev models AverageValue, KEDA's default, only.
    metric_type = raw.get("metricType") or "AverageValue"
    if metric_type != "AverageValue":
        raise ConfigurationError(
            f"{where}.metricType {metric_type} not supported by runnable-k8s dev "
            "(only AverageValue)"
        )


def _int(value: Any, where: str) -> int:
    # KEDA parses listLength and activationListLength as int64 (redis_scaler.go redisMetadata).
    text = str(value).strip()
    if not re.fullmatch(r"-?[0-9]+", text):
        raise ConfigurationError(f"{where} must be an integer, not {value!r}")
    return int(text)


def from_manifests(scaled_object: Mapping[str, Any], source: str) -> ScalingConfig:
    """Read a rendered KEDA ScaledObject (values already copied from the ConfigMap).

    Raises:
        ConfigurationError: a field is missing, or of a kind this emulation does not model.
    """
    try:
        return _from_manifests(scaled_object, source)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigurationError(f"cannot read the ScaledObject in {source}: {exc!r}") from exc


def _from_manifests(scaled_object: Mapping[str, Any], source: str) -> ScalingConfig:
    annotations = (scaled_object.get("metadata") or {}).get("annotations") or {}
    keda_annotations = sorted(a for a in annotations if str(a).startswith(_KEDA_ANNOTATIONS))
    if keda_annotations:
        raise ConfigurationError(
            f"{source}: annotation(s) {', '.join(keda_annotations)} not supported by "
            "runnable-k8s dev"
        )
    spec = scaled_object["spec"]
    _refuse_unknown(spec, _SPEC, f"{source}: spec")
    advanced = spec.get("advanced") or {}
    _refuse_unknown(advanced, _ADVANCED, f"{source}: spec.advanced")
    hpa_config = advanced.get("horizontalPodAutoscalerConfig") or {}
    _refuse_unknown(hpa_config, _HPA_CONFIG, f"{source}: horizontalPodAutoscalerConfig")

    triggers: dict[str, str] = {}
    targets: dict[str, float] = {}
    activations: dict[str, float] = {}
    for i, trigger in enumerate(spec["triggers"]):
        where = f"{source}: spec.triggers[{i}]"
        _refuse_unknown(trigger, _TRIGGER, where)
        if trigger.get("type") not in _TRIGGER_TYPES:
            raise ConfigurationError(
                f"{where}: type {trigger.get('type')!r} not supported by runnable-k8s dev "
                "(only redis and redis-sentinel)"
            )
        _average_value(trigger, where)
        metadata = trigger["metadata"]
        _refuse_unknown(metadata, _REDIS_SCALING | _REDIS_CONNECTION, f"{where}.metadata")
        name = str(trigger.get("name") or f"trigger{i}")
        triggers[name] = str(metadata["listName"])
        targets[name] = float(_int(metadata.get("listLength", 5), f"{where} listLength"))
        activations[name] = float(
            _int(metadata.get("activationListLength", 0), f"{where} activationListLength")
        )
    if not triggers:
        raise ConfigurationError(f"{source}: the ScaledObject has no trigger")

    modifiers = advanced.get("scalingModifiers") or {}
    _refuse_unknown(modifiers, _MODIFIERS, f"{source}: scalingModifiers")
    divisors: dict[str, float] = {}
    hold_when: tuple[str, ...] = ()
    hold_with: tuple[str, ...] = ()
    if modifiers:
        _average_value(modifiers, f"{source}: scalingModifiers")
        hold_when, hold_with, rest = split_hold(str(modifiers["formula"]))
        names, divisors = parse_formula(rest)
        target = float(modifiers["target"])
        activation = float(modifiers.get("activationTarget") or "0")
    else:
        names = tuple(triggers)
        first = next(iter(triggers))
        target, activation = targets[first], activations[first]

    behavior = hpa_config.get("behavior")
    if behavior is not None:
        _refuse_unknown(behavior, _BEHAVIOR, f"{source}: behavior")
    config = ScalingConfig(
        polling_interval=float(spec.get("pollingInterval", 30)),
        hpa_sync_period=HPA_SYNC_PERIOD,
        cooldown=float(spec.get("cooldownPeriod", 300)),
        initial_cooldown=float(spec.get("initialCooldownPeriod", 0)),
        min_replicas=int(spec.get("minReplicaCount", 0)),
        max_replicas=int(spec.get("maxReplicaCount", 100)),
        target=target,
        activation=activation,
        triggers=triggers,
        formula=names,
        divisors=divisors,
        hold_when=hold_when,
        hold_with=hold_with,
        modifiers=bool(modifiers),
        trigger_targets={} if modifiers else targets,
        trigger_activations={} if modifiers else activations,
        behavior=behavior is not None,
        scale_up=_rules((behavior or {}).get("scaleUp"), DEFAULT_SCALE_UP, f"{source}: scaleUp"),
        scale_down=_rules(
            (behavior or {}).get("scaleDown"), DEFAULT_SCALE_DOWN, f"{source}: scaleDown"
        ),
        source=source,
    )
    config.validate()
    return config


def split_hold(formula: str) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """`a > 0 && b > 0 ? b : REST` (flow control's hold, see README "Flow control"): the names
    that must all be above 0, the names summed then, and REST. A formula without `?` is all
    REST.

    Raises:
        ConfigurationError: a condition other than names compared `> 0` joined by `&&`, or a
            held value other than a plain sum of names.
    """
    match = re.fullmatch(r"\s*([^?:]+)\?([^?:]+):([^?:]+)", formula)
    if "?" not in formula:
        return (), (), formula
    if match is None:
        raise ConfigurationError(f"only `a > 0 && b > 0 ? a : sum` is supported, not {formula!r}")
    when: list[str] = []
    for clause in match.group(1).split("&&"):
        name = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_-]*)\s*>\s*0\s*", clause)
        if name is None:
            raise ConfigurationError(f"only `name > 0` conditions are supported, not {clause!r}")
        when.append(name.group(1))
    held, divisors = parse_formula(match.group(2))
    if divisors:
        raise ConfigurationError(f"the held value must be a plain sum, not {match.group(2)!r}")
    return tuple(when), held, match.group(3)


def parse_formula(formula: str) -> tuple[tuple[str, ...], dict[str, float]]:
    """The terms of a sum of trigger names, each optionally divided by a number
    (`queued + inflight + pending / 100`): the names, and the divisor of each divided one.

    Raises:
        ConfigurationError: any other expression (KEDA accepts more; this emulation does not).
    """
    names: list[str] = []
    divisors: dict[str, float] = {}
    for term in formula.split("+"):
        match = re.fullmatch(
            r"\s*([A-Za-z_][A-Za-z0-9_-]*)\s*(?:/\s*([0-9]+(?:\.[0-9]+)?)\s*)?", term
        )
        if match is None or (match.group(2) is not None and float(match.group(2)) <= 0):
            raise ConfigurationError(
                "only sums of trigger names, each optionally divided by a number, are "
                f"supported, not {formula!r}"
            )
        names.append(match.group(1))
        if match.group(2) is not None:
            divisors[match.group(1)] = float(match.group(2))
    return tuple(names), divisors


def _rules(raw: Mapping[str, Any] | None, default: Rules, where: str) -> Rules:
    """One direction of `behavior`, with the API server's defaults for what it leaves out
    (defaults.go copyHPAScalingRules: each field set replaces the default's)."""
    if raw is None:
        return default
    _refuse_unknown(raw, _RULES, where)
    policies = default.policies
    if raw.get("policies") is not None:
        for policy in raw["policies"]:
            _refuse_unknown(policy, _POLICY, f"{where}.policies")
        policies = tuple(
            Policy(p["type"], int(p["value"]), float(p["periodSeconds"])) for p in raw["policies"]
        )
    for policy in policies:
        if policy.type not in ("Pods", "Percent"):
            raise ConfigurationError(f"{where}: unknown policy type {policy.type}")
    select = raw.get("selectPolicy", default.select)
    if select not in ("Max", "Min", "Disabled"):
        raise ConfigurationError(f"{where}: unknown selectPolicy {select}")
    tolerance = raw.get("tolerance")
    return Rules(
        float(raw.get("stabilizationWindowSeconds", default.window)),
        policies,
        select,
        None if tolerance is None else float(tolerance),
    )


def load_base(root: Path) -> ScalingConfig:
    """Read `base/scaledobject.yaml`, applying the copies `components/single-source` makes from
    `base/config.env` (queue -> listNames, concurrency -> target and listLength).

    Raises:
        ConfigurationError: the files are missing or unreadable.
    """
    import yaml

    base = root / "base"
    try:
        values = read_config_env(base / "config.env")
        scaled_object = yaml.safe_load((base / "scaledobject.yaml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read the kustomize base in {base}: {exc}") from exc
    spec = scaled_object.get("spec", {})
    concurrency = values.get("RUNNABLE_K8S_CONCURRENCY")
    queue = values.get("RUNNABLE_K8S_QUEUE")
    if concurrency:
        modifiers = spec.get("advanced", {}).get("scalingModifiers")
        if modifiers:
            modifiers["target"] = concurrency
        for trigger in spec.get("triggers", []):
            trigger.setdefault("metadata", {})["listLength"] = concurrency
    config = from_manifests(scaled_object, f"{base}/scaledobject.yaml + config.env")
    return config.with_overrides(queue=queue) if queue else config


def load(
    root: Path | None = None, overlay: str | None = "dev"
) -> tuple[ScalingConfig, dict[str, str]]:
    """The scaling parameters and the ConfigMap values (`config.env`) of an overlay.

    With `overlay` set and kubectl available, the overlay is rendered with kustomize (what
    `kubectl apply -k` would apply); otherwise the base files are read directly.

    Returns:
        (scaling parameters, config.env values after the overlay's changes).

    Raises:
        ConfigurationError: the manifests are missing or unreadable, or use a field `dev`
            does not model.
    """
    from runnable_k8s.cluster import manifests

    root = root or manifests.default_root()
    if overlay:
        try:
            objects = manifests.render(overlay, root=root)
        except ConfigurationError:
            objects = []  # no kubectl: fall back to the base files
        scaled = [o for o in objects if o.get("kind") == "ScaledObject"]
        maps = [
            o
            for o in objects
            if o.get("kind") == "ConfigMap"
            and str(o["metadata"].get("name", "")).startswith(manifests.CONFIG_MAP)
        ]
        if scaled and maps:
            source = f"{root}/overlays/{overlay} (kustomize)"
            data = {str(k): str(v) for k, v in (maps[0].get("data") or {}).items()}
            return from_manifests(scaled[0], source), data
    return load_base(root), read_config_env(root / "base" / "config.env")
