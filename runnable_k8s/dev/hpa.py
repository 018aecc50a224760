"""The HorizontalPodAutoscaler's decision for the HPA KEDA creates, as pure functions of time.

Reproduced from k8s.io/kubernetes pkg/controller/podautoscaler (horizontal.go and
replica_calculator.go, the controller since kubernetes#109058 and KEP-4951):

- each External metric with an AverageValue target proposes ceil(value / target), or the current
  count while value / (target x current) is within the tolerance, bounds included
  (GetExternalPerPodMetricReplicas, Tolerances.isWithin); the largest proposal wins
  (computeReplicasForMetrics);
- a count outside [minReplicas, maxReplicas] is brought back without looking at the metrics
  (reconcileAutoscaler);
- with a `behavior`: the stabilisation windows (stabilizeRecommendationWithBehaviors), then the
  rate policies counted from the count at the start of each policy's period, current - added +
  removed by this HPA within it (convertDesiredReplicasWithBehaviorRate,
  calculateScaleUpLimitWithScalingRules, calculateScaleDownLimitWithBehaviors);
- without: the legacy path, the highest recommendation of the controller's downscale window and
  at most max(2 x current, 4) (normalizeDesiredReplicas, stabilizeRecommendation,
  convertDesiredReplicasWithRules, calculateScaleUpLimit).

Only the HPA's own changes are scale events (storeScaleEvent, called when it rescales, and only
with a `behavior`): KEDA's 0 -> N and N -> 0 are not.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from runnable_k8s.dev.config import HPA_TOLERANCE, Rules, ScalingConfig


@dataclass(slots=True)
class _ScaleEvent:
    """timestampedScaleEvent: replicas this HPA added (or removed) at `at`."""

    at: float
    change: int
    outdated: bool = False


class Hpa:
    """The controller's memory for one HPA (recommendations, scale events) and its sync."""

    def __init__(self, config: ScalingConfig) -> None:
        self.config = config
        self._recommendations: deque[tuple[float, int]] | None = None
        self._up_events: list[_ScaleEvent] = []
        self._down_events: list[_ScaleEvent] = []

    @property
    def min_replicas(self) -> int:
        # KEDA creates the HPA with minReplicas >= 1 (scaledobject_types.go GetHPAMinReplicas);
        # only KEDA itself goes to 0.
        return max(self.config.min_replicas, 1)

    def sync(self, now: float, metrics: Sequence[tuple[str, int, int]], current: int) -> int | None:
        """One reconcileAutoscaler: the replicas to set, or None when scaling is disabled
        (the target is at 0, where KEDA decides).

        Args:
            metrics: (name, value, AverageValue target) per metric, in thousandths.
        """
        if self._recommendations is None:
            # recordInitialRecommendation: the count found on the first sync.
            self._recommendations = deque([(now, current)])
        if current == 0:
            return None  # "ScalingDisabled": minReplicas is >= 1 and the target is at 0
        config = self.config
        if current > config.max_replicas:
            desired = config.max_replicas
        elif current < self.min_replicas:
            desired = self.min_replicas
        else:
            proposal = max(self.proposal(value, target, current) for _, value, target in metrics)
            if config.behavior:
                desired = self._with_behaviors(now, proposal, current)
            else:
                desired = self._legacy(now, proposal, current)
        if desired != current and config.behavior:
            self._store_event(now, current, desired)
        return desired

    def proposal(self, value: int, target: int, current: int) -> int:
        """GetExternalPerPodMetricReplicas for one metric (value and target in thousandths)."""
        ratio = value / (target * current)
        up = self.config.scale_up.tolerance
        down = self.config.scale_down.tolerance
        up = HPA_TOLERANCE if up is None else up
        down = HPA_TOLERANCE if down is None else down
        if (1.0 - down) <= ratio <= (1.0 + up):
            return current
        return math.ceil(value / target)

    # -- with a behavior block ---------------------------------------------------------------

    def _with_behaviors(self, now: float, desired: int, current: int) -> int:
        stabilized = self._stabilize_with_behaviors(now, desired, current)
        return self._rate(now, stabilized, current)

    def _stabilize_with_behaviors(self, now: float, desired: int, current: int) -> int:
        up, down = self.config.scale_up, self.config.scale_down
        recommendations = self._recommendations
        assert recommendations is not None
        up_rec = down_rec = desired
        for at, value in recommendations:
            # rec.timestamp.After(cutoff): a recommendation exactly a window old is out.
            if now - at < up.window:
                up_rec = min(up_rec, value)
            if now - at < down.window:
                down_rec = max(down_rec, value)
        recommendation = min(max(current, up_rec), down_rec)
        horizon = max(up.window, down.window)
        while recommendations and now - recommendations[0][0] > horizon:
            recommendations.popleft()
        recommendations.append((now, desired))  # the unstabilised one
        return recommendation

    def _rate(self, now: float, desired: int, current: int) -> int:
        config = self.config
        if desired > current:
            limit = max(self._limit(now, current, config.scale_up, +1), current)
            return min(desired, config.max_replicas, limit)
        if desired < current:
            limit = min(self._limit(now, current, config.scale_down, -1), current)
            return max(desired, self.min_replicas, limit)
        return desired

    def _limit(self, now: float, current: int, rules: Rules, sign: int) -> int:
        if rules.select == "Disabled":
            return current
        proposals = []
        for policy in rules.policies:
            start = (
                current
                - self._changed(self._up_events, now, policy.period)
                + self._changed(self._down_events, now, policy.period)
            )
            if policy.type == "Pods":
                proposals.append(start + sign * policy.value)
            elif sign > 0:
                # Rounded up, so that a Percent policy can always add a replica.
                proposals.append(math.ceil(start * (1 + policy.value / 100)))
            else:
                proposals.append(int(start * (1 - policy.value / 100)))
        # "Min" is the smallest change: the lowest count up, the highest count down.
        lowest = (rules.select == "Min") == (sign > 0)
        return min(proposals) if lowest else max(proposals)

    @staticmethod
    def _changed(events: list[_ScaleEvent], now: float, period: float) -> int:
        # getReplicasChangePerPeriod: events strictly newer than `period` seconds, outdated or
        # not (a scale-down policy's longer period still counts scale-ups marked outdated).
        return sum(event.change for event in events if now - event.at < period)

    def _store_event(self, now: float, current: int, desired: int) -> None:
        """storeScaleEvent: mark the events older than this direction's longest policy period
        outdated (markScaleEventsOutdated), then reuse the last outdated slot or append."""
        up = desired > current
        events = self._up_events if up else self._down_events
        rules = self.config.scale_up if up else self.config.scale_down
        longest = max((p.period for p in rules.policies), default=0.0)
        reuse = None
        for i, event in enumerate(events):
            if now - event.at > longest:
                event.outdated = True
            if event.outdated:
                reuse = i
        new = _ScaleEvent(now, abs(desired - current))
        if reuse is None:
            events.append(new)
        else:
            events[reuse] = new

    # -- without a behavior block (legacy) ---------------------------------------------------

    def _legacy(self, now: float, desired: int, current: int) -> int:
        recommendations = self._recommendations
        assert recommendations is not None
        window = self.config.scale_down.window
        # stabilizeRecommendation: the highest recommendation not Before(now - window).
        stabilized = max([desired] + [v for at, v in recommendations if now - at <= window])
        while recommendations and now - recommendations[0][0] > window:
            recommendations.popleft()
        recommendations.append((now, desired))
        # convertDesiredReplicasWithRules with calculateScaleUpLimit.
        highest = min(self.config.max_replicas, max(2 * current, 4))
        return max(self.min_replicas, min(stabilized, highest))
