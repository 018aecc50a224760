"""The scaling decision KEDA and the HPA make, as pure functions of time and the metric.

The parameters come from the same kustomize files the cluster uses (`base/config.env` and the
ScaledObject, with the values `components/single-source` copies), so `runnable-k8s dev` scales
on exactly what a cluster would. The rules reproduced here:

- KEDA activation: the metric (`queued + inflight + pending / 100`) is *active* above
  `activationTarget`. From 0 replicas an active metric scales to 1; with no activity for
  `cooldownPeriod` seconds the last replica goes (1 -> 0). Between 1 and max the HPA decides.
- HPA (AverageValue): desired = ceil(metric / target), unchanged while metric / (target *
  current) is within the 10 % tolerance; then the stabilisation windows (scale up to the lowest,
  scale down to the highest recommendation of the window), then the rate policies (replicas
  added or removed per period, `selectPolicy`), then [max(min, 1), max].

The HPA controller syncs every 15 s and KEDA polls every `pollingInterval`; here both run once
per polling interval.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runnable_k8s.errors import ConfigurationError
from runnable_k8s.protocol import keys

HPA_TOLERANCE = 0.1
"""kube-controller-manager's default `--horizontal-pod-autoscaler-tolerance`."""

PolicyType = Literal["Pods", "Percent"]


@dataclass(frozen=True, slots=True)
class Policy:
    """One HPA scaling policy: at most `value` pods (or percent) per `period` seconds."""

    type: PolicyType
    value: int
    period: float


@dataclass(frozen=True, slots=True)
class Rules:
    """HPA `behavior.scaleUp` or `behavior.scaleDown`."""

    window: float
    policies: tuple[Policy, ...]
    select: Literal["Max", "Min", "Disabled"] = "Max"


DEFAULT_SCALE_UP = Rules(0.0, (Policy("Percent", 100, 15.0), Policy("Pods", 4, 15.0)), "Max")
"""The HPA's default scale-up behaviour."""
DEFAULT_SCALE_DOWN = Rules(300.0, (Policy("Percent", 100, 15.0),), "Max")
"""The HPA's default scale-down behaviour."""


@dataclass(frozen=True, slots=True)
class ScalingConfig:
    """The ScaledObject's parameters (seconds, replicas, runs)."""

    polling_interval: float = 30.0
    cooldown: float = 300.0
    min_replicas: int = 0
    max_replicas: int = 100
    target: float = 100.0
    activation: float = 0.0
    triggers: Mapping[str, str] = field(
        default_factory=lambda: {"queued": "runnable-k8s", "inflight": "unacked"}
    )
    """Trigger name -> Redis key whose length KEDA reads (LLEN, HLEN, SCARD or ZCARD)."""
    formula: tuple[str, ...] = ("queued", "inflight")
    """Trigger names summed by `scalingModifiers.formula`."""
    factors: Mapping[str, float] = field(default_factory=dict)
    """Weights of formula terms written `name / N` (1/N); a plain name weighs 1."""
    scale_up: Rules = field(default_factory=lambda: DEFAULT_SCALE_UP)
    scale_down: Rules = field(default_factory=lambda: DEFAULT_SCALE_DOWN)
    source: str = "defaults"
    """Where the values were read (for the live view)."""

    def replace(self, **changes: Any) -> ScalingConfig:
        return dataclasses.replace(self, **changes)

    def metric(self, lengths: Mapping[str, int]) -> float:
        """The formula's value for these trigger lengths."""
        return float(sum(lengths[name] * self.factors.get(name, 1.0) for name in self.formula))

    def describe_formula(self) -> str:
        return " + ".join(
            f"{name} ({self.triggers[name]})"
            + (f" / {1 / self.factors[name]:g}" if name in self.factors else "")
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
            config = config.replace(polling_interval=polling_interval)
        if cooldown is not None:
            config = config.replace(cooldown=cooldown)
        if min_replicas is not None:
            config = config.replace(min_replicas=min_replicas)
        if max_replicas is not None:
            config = config.replace(max_replicas=max_replicas)
        if target is not None:
            config = config.replace(target=target)
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
        """Raises: ConfigurationError for values KEDA would refuse."""
        if self.polling_interval <= 0 or self.cooldown < 0:
            raise ConfigurationError("pollingInterval must be > 0 and cooldownPeriod >= 0")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ConfigurationError(
                f"need 0 <= minReplicaCount ({self.min_replicas}) <= maxReplicaCount "
                f"({self.max_replicas}) and maxReplicaCount >= 1"
            )
        if self.target <= 0 or self.activation < 0:
            raise ConfigurationError("the target must be > 0 and the activation target >= 0")
        unknown = [name for name in self.formula if name not in self.triggers]
        if unknown:
            raise ConfigurationError(f"the formula names unknown triggers: {unknown}")


@dataclass(frozen=True, slots=True)
class Decision:
    """One evaluation: the metric, whether KEDA saw it active, and the replicas to run."""

    metric: float
    active: bool
    current: int
    desired: int
    reason: str


class Autoscaler:
    """KEDA + HPA state (last activity, recommendations, scale events) and their decision.

    Call `decide(now, metric, current)` once per polling interval; `now` is a monotonic clock.
    """

    def __init__(self, config: ScalingConfig) -> None:
        config.validate()
        self.config = config
        self._last_active: float | None = None
        self._recommendations: deque[tuple[float, int]] = deque()
        self._events: deque[tuple[float, int]] = deque()  # (time, replicas added (+) / removed (-))

    @property
    def hpa_min(self) -> int:
        # KEDA creates the HPA with minReplicas >= 1; only KEDA itself goes to 0.
        return max(self.config.min_replicas, 1)

    def decide(self, now: float, metric: float, current: int) -> Decision:
        config = self.config
        active = metric > config.activation
        if active:
            self._last_active = now
        if current == 0:
            if active:
                desired = max(config.min_replicas, 1)
                return self._record(now, Decision(metric, True, current, desired, "activated"))
            return self._record(now, Decision(metric, False, 0, config.min_replicas, "idle"))
        if not active and config.min_replicas == 0:
            quiet_since = self._last_active
            if quiet_since is None:
                quiet_since = self._last_active = now
            if now - quiet_since >= config.cooldown:
                self._recommendations.clear()
                return self._record(now, Decision(metric, False, current, 0, "cooldown over"))
        desired, reason = self._hpa(now, metric, current)
        return self._record(now, Decision(metric, active, current, desired, reason))

    def _record(self, now: float, decision: Decision) -> Decision:
        if decision.desired != decision.current:
            self._events.append((now, decision.desired - decision.current))
        return decision

    # -- the HPA ----------------------------------------------------------------------------

    def _hpa(self, now: float, metric: float, current: int) -> tuple[int, str]:
        config = self.config
        ratio = metric / (config.target * current)
        # Within the tolerance the HPA leaves the replica count alone.
        within = abs(ratio - 1.0) <= HPA_TOLERANCE
        raw = current if within else math.ceil(metric / config.target)
        stabilized = self._stabilize(now, raw, current)
        desired, limited = self._rate_limit(now, stabilized, current)
        reason = f"ceil({metric:g}/{config.target:g})={raw}"
        if stabilized != raw:
            reason += f", stabilised {stabilized}"
        if limited:
            reason += f", {limited}"
        return desired, reason

    def _stabilize(self, now: float, raw: int, current: int) -> int:
        up, down = self.config.scale_up, self.config.scale_down
        horizon = max(up.window, down.window)
        self._recommendations.append((now, raw))
        while self._recommendations and now - self._recommendations[0][0] > horizon:
            self._recommendations.popleft()
        up_rec = down_rec = raw
        for at, value in self._recommendations:
            if now - at <= up.window:
                up_rec = min(up_rec, value)
            if now - at <= down.window:
                down_rec = max(down_rec, value)
        return min(max(current, up_rec), down_rec)

    def _changed_within(self, now: float, period: float, sign: int) -> int:
        return sum(
            abs(delta) for at, delta in self._events if now - at <= period and delta * sign > 0
        )

    def _rate_limit(self, now: float, desired: int, current: int) -> tuple[int, str]:
        config = self.config
        horizon = max(
            [p.period for p in config.scale_up.policies + config.scale_down.policies] or [0.0]
        )
        while self._events and now - self._events[0][0] > horizon:
            self._events.popleft()
        if desired > current:
            limit = self._up_limit(now, current)
            allowed = min(config.max_replicas, limit)
            if desired > allowed:
                return allowed, f"scale-up limited to {allowed}"
            return desired, ""
        if desired < current:
            limit = self._down_limit(now, current)
            allowed = max(self.hpa_min, limit)
            if desired < allowed:
                return allowed, f"scale-down limited to {allowed}"
            return desired, ""
        return max(self.hpa_min, min(config.max_replicas, desired)), ""

    def _up_limit(self, now: float, current: int) -> int:
        rules = self.config.scale_up
        if rules.select == "Disabled":
            return current
        proposals = []
        for policy in rules.policies:
            start = current - self._changed_within(now, policy.period, +1)
            if policy.type == "Pods":
                proposals.append(start + policy.value)
            else:
                proposals.append(math.ceil(start * (1 + policy.value / 100)))
        if not proposals:
            return self.config.max_replicas
        limit = max(proposals) if rules.select == "Max" else min(proposals)
        return max(limit, current)

    def _down_limit(self, now: float, current: int) -> int:
        rules = self.config.scale_down
        if rules.select == "Disabled":
            return current
        proposals = []
        for policy in rules.policies:
            start = current + self._changed_within(now, policy.period, -1)
            if policy.type == "Pods":
                proposals.append(start - policy.value)
            else:
                proposals.append(int(start * (1 - policy.value / 100)))
        if not proposals:
            return 0
        # Scaling down, the smallest change ("Min") is the highest replica count.
        limit = max(proposals) if rules.select == "Min" else min(proposals)
        return min(limit, current)


# -- reading the kustomize files ------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines of a kustomize env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and "=" in stripped:
            key, _, value = stripped.partition("=")
            values[key.strip()] = value.strip()
    return values


def from_manifests(scaled_object: Mapping[str, Any], source: str) -> ScalingConfig:
    """Read a rendered KEDA ScaledObject (values already copied from the ConfigMap).

    Raises:
        ConfigurationError: a field is missing or of a kind this emulation does not support.
    """
    try:
        spec = scaled_object["spec"]
        advanced = spec.get("advanced", {})
        modifiers = advanced.get("scalingModifiers") or {}
        triggers = {
            t.get("name") or f"trigger{i}": str(t["metadata"]["listName"])
            for i, t in enumerate(spec["triggers"])
            if t.get("type") == "redis"
        }
        factors: dict[str, float] = {}
        if modifiers:
            names, factors = parse_formula(str(modifiers["formula"]))
            target = float(modifiers["target"])
            activation = float(modifiers.get("activationTarget", "0"))
        else:
            names = tuple(triggers)
            first = next(t for t in spec["triggers"] if t.get("type") == "redis")
            target = float(first["metadata"].get("listLength", "5"))
            activation = float(first["metadata"].get("activationListLength", "0"))
        behavior = advanced.get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
        config = ScalingConfig(
            polling_interval=float(spec.get("pollingInterval", 30)),
            cooldown=float(spec.get("cooldownPeriod", 300)),
            min_replicas=int(spec.get("minReplicaCount", 0)),
            max_replicas=int(spec.get("maxReplicaCount", 100)),
            target=target,
            activation=activation,
            triggers=triggers,
            formula=names,
            factors=factors,
            scale_up=_rules(behavior.get("scaleUp"), DEFAULT_SCALE_UP),
            scale_down=_rules(behavior.get("scaleDown"), DEFAULT_SCALE_DOWN),
            source=source,
        )
    except (KeyError, TypeError, ValueError, StopIteration) as exc:
        raise ConfigurationError(f"cannot read the ScaledObject in {source}: {exc!r}") from exc
    config.validate()
    return config


def parse_formula(formula: str) -> tuple[tuple[str, ...], dict[str, float]]:
    """The terms of a sum of trigger names, each optionally divided by a number
    (`queued + inflight + pending / 100`): the names, and the weight of each divided one.

    Raises:
        ConfigurationError: any other expression (KEDA accepts more; this emulation does not).
    """
    names: list[str] = []
    factors: dict[str, float] = {}
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
            factors[match.group(1)] = 1 / float(match.group(2))
    return tuple(names), factors


def _rules(raw: Mapping[str, Any] | None, default: Rules) -> Rules:
    if not raw:
        return default
    policies = tuple(
        Policy(p["type"], int(p["value"]), float(p["periodSeconds"]))
        for p in raw.get("policies", [])
    )
    for policy in policies:
        if policy.type not in ("Pods", "Percent"):
            raise ValueError(f"unknown policy type {policy.type}")
    select = raw.get("selectPolicy", "Max")
    if select not in ("Max", "Min", "Disabled"):
        raise ValueError(f"unknown selectPolicy {select}")
    return Rules(
        float(raw.get("stabilizationWindowSeconds", default.window)),
        policies or default.policies,
        select,
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
        ConfigurationError: the manifests are missing or unreadable.
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
