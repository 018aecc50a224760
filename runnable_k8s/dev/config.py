"""The scaling parameters `runnable-k8s dev` models: those of a KEDA ScaledObject and of the
HPA KEDA creates from it (read from the manifests by `scaledobject`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from runnable_k8s import keda
from runnable_k8s.errors import ConfigurationError
from runnable_k8s.store import keys

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
        default_factory=lambda: {"queued": "runnable-k8s", "inflight": keys.UNACKED}
    )
    """Trigger name -> Redis key whose length KEDA reads (LLEN, HLEN, SCARD or ZCARD)."""
    formula: tuple[str, ...] = ("queued", "inflight")
    """Trigger names summed by `scalingModifiers.formula`."""
    divisors: Mapping[str, float] = field(default_factory=dict)
    """The N of formula terms written `name / N`; a plain name is not divided."""
    hold_when: tuple[str, ...] = ()
    """Triggers that, all above 0, switch the formula to the sum of `hold_with` (flow control:
    `waiting > 0 && inflight > 0 ? inflight : ...` keeps the replicas there are while model
    calls wait on cluster-wide limits, since more workers would only wait too)."""
    hold_with: tuple[str, ...] = ()
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
        if self.hold_when and all(lengths[name] > 0 for name in self.hold_when):
            return int(sum(lengths[name] for name in self.hold_with) * 1000)
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
        summed = " + ".join(
            f"{name} ({self.triggers[name]})"
            + (f" / {self.divisors[name]:g}" if name in self.divisors else "")
            for name in self.formula
        )
        if not self.hold_when:
            return summed
        return f"{summed}; held at {' + '.join(self.hold_with)} while " + " and ".join(
            f"{name} ({self.triggers[name]}) > 0" for name in self.hold_when
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
            renamed = {
                name: key
                for name, key in keda.trigger_keys(queue).items()
                if name in keda.FOLLOW_QUEUE
            }
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
        named = (*self.formula, *self.hold_when, *self.hold_with)
        unknown = [name for name in named if name not in self.triggers]
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
