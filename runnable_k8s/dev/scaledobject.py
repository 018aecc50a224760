"""The ScaledObject as `runnable-k8s dev` models it: its parameters, and reading them from the
kustomize files the cluster uses (`base/config.env` and the ScaledObject, with the values
`components/single-source` copies).

Every field KEDA or the HPA would act on is either modelled (`dev` decides on it as the cluster
does) or refused with a ConfigurationError: `dev` never accepts a field and then ignores it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runnable_k8s.errors import ConfigurationError
from runnable_k8s.protocol import keys

HPA_SYNC_PERIOD = 15.0
"""kube-controller-manager's default `--horizontal-pod-autoscaler-sync-period`: the HPA syncs on
its own clock, whatever KEDA's `pollingInterval`."""
HPA_TOLERANCE = 0.1
"""kube-controller-manager's default `--horizontal-pod-autoscaler-tolerance`, used for a
direction whose `behavior` sets no `tolerance` of its own."""

PolicyType = Literal["Pods", "Percent"]
Select = Literal["Max", "Min", "Disabled"]


@dataclass(frozen=True, slots=True)
class Policy:
    """One HPA scaling policy: at most `value` pods (or percent) per `period` seconds."""

    type: PolicyType
    value: int
    period: float


@dataclass(frozen=True, slots=True)
class Rules:
    """HPA `behavior.scaleUp` or `behavior.scaleDown` after the API server's defaulting."""

    window: float
    policies: tuple[Policy, ...]
    select: Select = "Max"
    tolerance: float | None = None
    """The rule's own `tolerance` (KEP-4951, Kubernetes 1.33+); None: the cluster's 10 %."""


# The defaults the API server fills in (k8s.io/kubernetes pkg/apis/autoscaling/v2/defaults.go,
# GenerateHPAScaleUpRules / GenerateHPAScaleDownRules; the scale-down window, left nil there,
# is the controller's --horizontal-pod-autoscaler-downscale-stabilization, 5 minutes).
DEFAULT_SCALE_UP = Rules(0.0, (Policy("Pods", 4, 15.0), Policy("Percent", 100, 15.0)), "Max")
"""The HPA's default scale-up behaviour."""
DEFAULT_SCALE_DOWN = Rules(300.0, (Policy("Percent", 100, 15.0),), "Max")
"""The HPA's default scale-down behaviour (its window is also the legacy one)."""


@dataclass(frozen=True, slots=True)
class ScalingConfig:
    """The ScaledObject's parameters (seconds, replicas, runs)."""

    polling_interval: float = 30.0
    hpa_sync_period: float | None = None
    """Seconds between HPA syncs; None: one with each KEDA poll (configs built in code, with
    seconds instead of minutes). Read from manifests it is the controller's 15 s."""
    cooldown: float = 300.0
    initial_cooldown: float = 0.0
    """`initialCooldownPeriod`: how long after the ScaledObject appears (here: `dev` starts) a
    target that was never active may be scaled to zero."""
    min_replicas: int = 0
    max_replicas: int = 100
    target: float = 100.0
    """With `scalingModifiers`: its target; without: the first trigger's `listLength`."""
    activation: float = 0.0
    """With `scalingModifiers`: its activationTarget; without: the first trigger's."""
    triggers: Mapping[str, str] = field(
        default_factory=lambda: {"queued": "runnable-k8s", "inflight": "unacked"}
    )
    """Trigger name -> Redis key whose length KEDA reads (LLEN, HLEN, SCARD or ZCARD)."""
    formula: tuple[str, ...] = ("queued", "inflight")
    """Trigger names summed by `scalingModifiers.formula`."""
    divisors: Mapping[str, float] = field(default_factory=dict)
    """The N of formula terms written `name / N`; a plain name is not divided."""
    modifiers: bool = True
    """Whether the ScaledObject has `scalingModifiers`. Without, KEDA gives the HPA one metric
    per trigger (`trigger_targets`) and any one trigger activates (`trigger_activations`)."""
    trigger_targets: Mapping[str, float] = field(default_factory=dict)
    """Without `scalingModifiers`: trigger name -> its `listLength` (default 5)."""
    trigger_activations: Mapping[str, float] = field(default_factory=dict)
    """Without `scalingModifiers`: trigger name -> its `activationListLength` (default 0)."""
    behavior: bool = True
    """Whether the HPA has a `behavior` block. Without, the HPA takes its legacy path: the
    scale-down window of `scale_down.window`, and at most max(2 x current, 4) per sync."""
    scale_up: Rules = field(default_factory=lambda: DEFAULT_SCALE_UP)
    scale_down: Rules = field(default_factory=lambda: DEFAULT_SCALE_DOWN)
    source: str = "defaults"
    """Where the values were read (for the live view)."""

    def replace(self, **changes: Any) -> ScalingConfig:
        return dataclasses.replace(self, **changes)

    def metric(self, lengths: Mapping[str, int]) -> float:
        """The formula's value for these trigger lengths, as KEDA hands it to the HPA.
        Without `scalingModifiers`: the lengths' sum, for display only (the HPA then reads each
        trigger on its own, see `metrics`)."""
        if not self.modifiers:
            return float(sum(lengths[name] for name in self.triggers))
        return self._formula_milli(lengths) / 1000

    def _formula_milli(self, lengths: Mapping[str, int]) -> int:
        # Evaluated left to right as expr-lang does (`pending / 100` a float division), then
        # kept in thousandths, truncated: modifiers/formula.go calculateScalingModifiersFormula,
        # `ret.Value.SetMilli(int64(out * 1000))`.
        value = 0.0
        for name in self.formula:
            divisor = self.divisors.get(name)
            value += lengths[name] if divisor is None else lengths[name] / divisor
        return int(value * 1000)

    def metrics(self, lengths: Mapping[str, int]) -> list[tuple[str, int, int]]:
        """The HPA's External metrics: (name, value, AverageValue target), in thousandths as
        the HPA reads them (`MilliValue()`).

        With `scalingModifiers` one composite metric whose target is `int64(target * 1000)`;
        without, one per trigger, the list's length against its `listLength`
        (controllers/keda/hpa.go getScaledObjectMetricSpecs, redis_scaler.go
        GetMetricSpecForScaling and GetMetricsAndActivity)."""
        if self.modifiers:
            return [("formula", self._formula_milli(lengths), int(self.target * 1000))]
        return [
            (name, lengths[name] * 1000, int(self.trigger_targets[name] * 1000))
            for name in self.triggers
        ]

    def is_active(self, lengths: Mapping[str, int]) -> bool:
        """KEDA's activity (scale_handler.go getScaledObjectState): the formula's value above
        `activationTarget`, or without `scalingModifiers` any one trigger's length above its
        `activationListLength` (redis_scaler.go GetMetricsAndActivity)."""
        if self.modifiers:
            return self.metric(lengths) > self.activation
        return any(lengths[name] > self.trigger_activations[name] for name in self.triggers)

    def describe_formula(self) -> str:
        if not self.modifiers:
            return "the largest of " + ", ".join(
                f"{name} ({key}) / {self.trigger_targets[name]:g}"
                for name, key in self.triggers.items()
            )
        return " + ".join(
            f"{name} ({self.triggers[name]})"
            + (f" / {self.divisors[name]:g}" if name in self.divisors else "")
            for name in self.formula
        )

    def with_overrides(
        self,
        *,
        polling_interval: float | None = None,
        cooldown: float | None = None,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
        target: float | None = None,
        scale_down_window: float | None = None,
        queue: str | None = None,
    ) -> ScalingConfig:
        """A copy with local overrides (the `dev` command's options)."""
        config = self
        if polling_interval is not None:
            # A local speed-up: a shorter poll brings the HPA's sync down with it (a cluster's
            # HPA keeps its 15 s), so a demo in seconds is not held by a 15 s HPA.
            sync = config.hpa_sync_period
            config = config.replace(
                polling_interval=polling_interval,
                hpa_sync_period=None if sync is None else min(sync, polling_interval),
            )
        if cooldown is not None:
            config = config.replace(cooldown=cooldown)
        if min_replicas is not None:
            config = config.replace(min_replicas=min_replicas)
        if max_replicas is not None:
            config = config.replace(max_replicas=max_replicas)
        if target is not None:
            # One value, as RUNNABLE_K8S_CONCURRENCY is copied into every target in the cluster.
            config = config.replace(
                target=target, trigger_targets=dict.fromkeys(config.trigger_targets, target)
            )
        if scale_down_window is not None:
            down = dataclasses.replace(config.scale_down, window=scale_down_window)
            config = config.replace(scale_down=down)
        if queue is not None:
            # The keys that follow the queue's name (the single-source component copies it).
            renamed = {"queued": queue, "pending": keys.pending(queue)}
            config = config.replace(
                triggers={n: renamed.get(n, k) for n, k in config.triggers.items()}
            )
        config.validate()
        return config

    def validate(self) -> None:
        """Raises: ConfigurationError for values KEDA or the HPA would refuse."""
        if self.polling_interval <= 0 or self.cooldown < 0 or self.initial_cooldown < 0:
            raise ConfigurationError(
                "pollingInterval must be > 0, cooldownPeriod and initialCooldownPeriod >= 0"
            )
        if self.hpa_sync_period is not None and self.hpa_sync_period <= 0:
            raise ConfigurationError("the HPA sync period must be > 0")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ConfigurationError(
                f"need 0 <= minReplicaCount ({self.min_replicas}) <= maxReplicaCount "
                f"({self.max_replicas}) and maxReplicaCount >= 1"
            )
        targets = [self.target, *self.trigger_targets.values()]
        activations = [self.activation, *self.trigger_activations.values()]
        if min(targets) <= 0 or min(activations) < 0:
            raise ConfigurationError("the target must be > 0 and the activation target >= 0")
        unknown = [name for name in self.formula if name not in self.triggers]
        if unknown:
            raise ConfigurationError(f"the formula names unknown triggers: {unknown}")
        if not self.modifiers and (
            set(self.trigger_targets) != set(self.triggers)
            or set(self.trigger_activations) != set(self.triggers)
        ):
            raise ConfigurationError("without scalingModifiers every trigger needs its target")
        for rules in (self.scale_up, self.scale_down):
            if rules.tolerance is not None and rules.tolerance < 0:
                raise ConfigurationError("a behavior tolerance must be >= 0")
            if not rules.policies and rules.select != "Disabled":
                raise ConfigurationError("a behavior rule needs at least one policy")


# -- reading the kustomize files ------------------------------------------------------------

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
}
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
        if trigger.get("type") != "redis":
            raise ConfigurationError(
                f"{where}: type {trigger.get('type')!r} not supported by runnable-k8s dev "
                "(only redis)"
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
    if modifiers:
        _average_value(modifiers, f"{source}: scalingModifiers")
        names, divisors = parse_formula(str(modifiers["formula"]))
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


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines of a kustomize env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and "=" in stripped:
            key, _, value = stripped.partition("=")
            values[key.strip()] = value.strip()
    return values


def load_base(root: Path) -> ScalingConfig:
    """Read `base/scaledobject.yaml`, applying the copies `components/single-source` makes from
    `base/config.env` (queue -> listNames, concurrency -> target and listLength).

    Raises:
        ConfigurationError: the files are missing or unreadable.
    """
    import yaml

    base = root / "base"
    try:
        values = read_env_file(base / "config.env")
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
    return load_base(root), read_env_file(root / "base" / "config.env")
