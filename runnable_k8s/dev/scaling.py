"""The scaling decision KEDA and the HPA make, as pure functions of time and the trigger lengths.

The parameters come from the same kustomize files the cluster uses (see `scaledobject`), so
`runnable-k8s dev` scales on exactly what a cluster would. KEDA's part, reproduced from
kedacore/keda pkg/scaling/executor/scale_scaledobjects.go (RequestScale, scaleFromZeroOrIdle,
scaleToZeroOrIdle):

- activity: the formula's value above `activationTarget`, or without `scalingModifiers` any one
  trigger above its `activationListLength` (`ScalingConfig.is_active`);
- at 0 replicas an active target goes to max(minReplicaCount, 1); an inactive one below
  minReplicaCount goes to minReplicaCount;
- with minReplicaCount 0, once no trigger has been active for `cooldownPeriod` seconds (or, never
  active, `initialCooldownPeriod` after the ScaledObject appeared) KEDA sets 0, from whatever
  count the HPA had;
- everything else is the HPA's (`hpa.Hpa`), which never counts KEDA's changes as its own, and
  which syncs on its own clock (every 15 s) whatever KEDA's `pollingInterval`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from runnable_k8s.dev.config import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    HPA_SYNC_PERIOD,
    HPA_TOLERANCE,
    Policy,
    Rules,
    ScalingConfig,
)
from runnable_k8s.dev.hpa import Hpa
from runnable_k8s.dev.scaledobject import (
    from_manifests,
    load,
    load_base,
    parse_formula,
    split_hold,
)

__all__ = [
    "DEFAULT_SCALE_DOWN",
    "DEFAULT_SCALE_UP",
    "HPA_SYNC_PERIOD",
    "HPA_TOLERANCE",
    "Autoscaler",
    "Decision",
    "Policy",
    "Rules",
    "ScalingConfig",
    "from_manifests",
    "load",
    "load_base",
    "parse_formula",
    "split_hold",
]


@dataclass(frozen=True, slots=True)
class Decision:
    """One evaluation: the metric, whether KEDA saw it active, and the replicas to run."""

    metric: float
    active: bool
    current: int
    desired: int
    reason: str


class Autoscaler:
    """KEDA's state (when it was last active) and the HPA's, and their decision.

    Call `decide(now, lengths, current)` at each KEDA poll and each HPA sync (`keda` and `hpa`
    say which are due; both by default); `now` is a monotonic clock.
    """

    def __init__(self, config: ScalingConfig) -> None:
        config.validate()
        self.config = config
        self.hpa = Hpa(config)
        self._created: float | None = None
        self._last_active: float | None = None

    def decide(
        self,
        now: float,
        lengths: Mapping[str, int],
        current: int,
        *,
        keda: bool = True,
        hpa: bool = True,
    ) -> Decision:
        """A KEDA poll then an HPA sync (or either alone) for these trigger lengths at `current`
        replicas."""
        config = self.config
        if self._created is None:
            self._created = now  # the ScaledObject appears when dev starts
        metric = config.metric(lengths)
        active = config.is_active(lengths)

        def decision(desired: int, reason: str) -> Decision:
            return Decision(metric, active, current, desired, reason)

        if keda:
            if active:
                # RequestScale records LastActiveTime whenever the triggers are active.
                self._last_active = now
                if current == 0:
                    self._idle_sync(now, hpa, current)
                    return decision(max(config.min_replicas, 1), "activated")
            elif current == 0 or current < config.min_replicas:
                self._idle_sync(now, hpa, current)
                reason = "idle" if current == 0 else "minReplicaCount"
                return decision(config.min_replicas, reason)
            elif config.min_replicas == 0 and self._cooled_down(now):
                return decision(0, "cooldown over")
        if not hpa:
            return decision(current, "active" if active else "cooling down")
        metrics = config.metrics(lengths)
        desired = self.hpa.sync(now, metrics, current)
        if desired is None:
            return decision(current, "idle")  # at 0 the HPA leaves it to KEDA
        return decision(desired, self._reason(metrics, current, desired))

    def _idle_sync(self, now: float, due: bool, current: int) -> None:
        # Below minReplicas the HPA needs no metric: at 0 it only records what it found, above
        # 0 it sets minReplicas as KEDA does.
        if due:
            self.hpa.sync(now, [], current)

    def _cooled_down(self, now: float) -> bool:
        # scaleToZeroOrIdle compares with time.Before (strictly), but LastActiveTime and the
        # creation time are stored in whole seconds (metav1.Time), so a poll exactly
        # cooldownPeriod after the last active one already finds it passed.
        if self._last_active is None:
            assert self._created is not None
            return now - self._created >= self.config.initial_cooldown
        return now - self._last_active >= self.config.cooldown

    def _reason(self, metrics: list[tuple[str, int, int]], current: int, desired: int) -> str:
        parts = []
        for name, value, target in metrics:
            raw = math.ceil(value / target)
            text = ("" if name == "formula" else f"{name}: ") + (
                f"ceil({value / 1000:g}/{target / 1000:g})={raw}"
            )
            if self.hpa.proposal(value, target, current) != raw:
                text += f" (within tolerance: {current})"
            parts.append(text)
        highest = max(self.hpa.proposal(v, t, current) for _, v, t in metrics)
        reason = ", ".join(parts)
        if desired != highest:
            reason += f", limited to {desired}"
        return reason
