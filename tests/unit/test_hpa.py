"""`runnable-k8s dev` decides as KEDA and the HPA do, on scenarios worked out by hand from their
source (k8s.io/kubernetes pkg/controller/podautoscaler horizontal.go and replica_calculator.go;
kedacore/keda pkg/scaling/executor/scale_scaledobjects.go, pkg/scaling/scale_handler.go,
pkg/scaling/modifiers/formula.go, pkg/scalers/redis_scaler.go, controllers/keda/hpa.go).

Each docstring gives the derivation; the expected counts come from it, not from dev's output.
The shipped ScaledObject (k8s/base/scaledobject.yaml): pollingInterval 15, cooldownPeriod 300,
replicas 0..20, formula `queued + inflight + pending / 100` against target 100; scaleUp window 0,
Percent 100 / 30 s and Pods 4 / 30 s, selectPolicy Max; scaleDown window 600, Pods 1 / 120 s,
selectPolicy Min.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from runnable_k8s.cluster.manifests import default_root
from runnable_k8s.dev.scaling import Autoscaler, from_manifests


def shipped() -> dict[str, Any]:
    """The base ScaledObject as the cluster gets it (its values equal config.env's copies)."""
    raw = yaml.safe_load((default_root() / "base" / "scaledobject.yaml").read_text())
    return copy.deepcopy(raw)  # type: ignore[no-any-return]


def scaler_for(scaled_object: dict[str, Any]) -> Autoscaler:
    return Autoscaler(from_manifests(scaled_object, "test"))


def step(scaler: Autoscaler, t: float, current: int, **lengths: int) -> int:
    """One poll at `t` seconds with these trigger lengths (missing ones are 0)."""
    counts = dict.fromkeys(scaler.config.triggers, 0) | lengths
    return scaler.decide(t, counts, current).desired


def test_a_burst_ramps_as_the_cluster_does_five_ten_twenty() -> None:
    """5000 queued runs from 0 replicas, shipped config.

    t=0: KEDA's scaleFromZeroOrIdle sets 1; the HPA only records its initial recommendation (0)
    and no scale event: KEDA's change is not the HPA's (storeScaleEvent runs only when the HPA
    rescales).
    t=15 (current 1): ceil(5000/100) = 50; the period start is 1 - 0 added + 0 removed = 1, so
    Percent 100 allows ceil(1 x 2) = 2, Pods 4 allows 5; Max -> 5 (event +4 at 15).
    t=30: +4 is 15 s old (inside 30 s): start 5 - 4 = 1 -> 5 again.
    t=45: +4 is 30 s old; getReplicasChangePerPeriod counts only events After(now - 30 s), so it
    is out: start 5 -> max(10, 9) = 10 (event +5 at 45).
    t=60: start 10 - 5 = 5 -> 10.  t=75: start 10 -> max(20, 14) = 20 = maxReplicaCount.
    """
    scaler = scaler_for(shipped())
    replicas = 0
    seen = []
    for t in range(0, 90, 15):
        replicas = step(scaler, t, replicas, queued=5000)
        seen.append(replicas)
    assert seen == [1, 5, 5, 10, 10, 20]


def test_a_burst_after_a_scale_down_step_starts_from_the_count_before_it() -> None:
    """500 queued runs, then 350, then a burst of 5000 right after the HPA removed a pod.

    t=0: KEDA 0 -> 1.  t=15: ceil(500/100) = 5, start 1 -> max(2, 5) = 5.
    From t=30, 350 queued: 350 / (100 x 5) = 0.7 is outside the tolerance, so each sync
    recommends ceil(3.5) = 4, but stabilizeRecommendationWithBehaviors keeps the highest
    recommendation younger than 600 s, the 5 of t=15, until t=615 where it is exactly 600 s old
    (After(cutoff) is strict): then 4, and Pods 1 / 120 s allows 5 - 1 = 4 (event -1 at 615).
    t=630, 5000 queued: the period start is current - added + removed within 30 s
    = 4 - 0 + 1 = 5 (kubernetes#109058), so Percent 100 allows 10, Pods 4 allows 9 -> 10.
    """
    scaler = scaler_for(shipped())
    assert step(scaler, 0, 0, queued=500) == 1
    assert step(scaler, 15, 1, queued=500) == 5
    for t in range(30, 615, 15):
        assert step(scaler, t, 5, queued=350) == 5, t
    assert step(scaler, 615, 5, queued=350) == 4
    assert step(scaler, 630, 4, queued=5000) == 10


def test_exactly_ten_percent_off_target_is_within_the_tolerance() -> None:
    """Tolerances.isWithin: (1 - 0.1) <= ratio <= (1 + 0.1), bounds included (Kubernetes 1.33+).

    At 2 replicas, 220 runs: 220 / 200 = 1.1 -> keep 2 (outside would be ceil(2.2) = 3).
    At 10 replicas, 900 runs: 0.9 -> keep 10 (outside would be ceil(9) = 9; the scale-down
    window is set to 0 and Percent 100 so nothing else holds it).
    """
    scaled_object = shipped()
    scale_down = scaled_object["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"][
        "scaleDown"
    ]
    scale_down.update(
        stabilizationWindowSeconds=0,
        selectPolicy="Max",
        policies=[{"type": "Percent", "value": 100, "periodSeconds": 15}],
    )
    scaler = scaler_for(scaled_object)
    assert step(scaler, 0, 2, queued=220) == 2
    assert step(scaler, 15, 10, queued=900) == 10
    assert step(scaler, 30, 10, queued=899) == 9  # 0.899: outside, ceil(8.99) = 9


def test_a_behaviors_own_tolerance_is_used_in_its_direction() -> None:
    """`behavior.scaleUp.tolerance: 0.05`, `scaleDown.tolerance: 0.5` (KEP-4951).

    2 replicas, 215 runs: 1.075 > 1 + 0.05 -> ceil(2.15) = 3 (the default 10 % would keep 2).
    4 replicas, 250 runs: 0.625 >= 1 - 0.5 -> keep 4 (scale-down window 0 here, so the 10 %
    default would give ceil(2.5) = 3).
    """
    scaled_object = shipped()
    behavior = scaled_object["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    behavior["scaleUp"]["tolerance"] = "0.05"
    behavior["scaleDown"].update(stabilizationWindowSeconds=0, tolerance=0.5)
    assert step(scaler_for(scaled_object), 0, 2, queued=215) == 3
    scaler = scaler_for(scaled_object)
    assert step(scaler, 0, 4, queued=250) == 4
    # 190 runs: 0.475 is outside even 50 %: ceil(1.9) = 2, and Pods 1 / 120 s allows 4 - 1 = 3.
    assert step(scaler, 15, 4, queued=190) == 3


def test_without_a_behavior_block_the_hpa_takes_its_legacy_limits() -> None:
    """No `horizontalPodAutoscalerConfig`: KEDA creates the HPA with Behavior nil, so
    reconcileAutoscaler calls normalizeDesiredReplicas: stabilizeRecommendation keeps the highest
    recommendation not older than the controller's 300 s downscale window (bounds included), and
    convertDesiredReplicasWithRules allows at most calculateScaleUpLimit = max(2 x current, 4).

    t=0: KEDA 0 -> 1.  5000 queued, recommendation 50: t=15 min(50, 4) = 4; t=30 8.
    From t=45 only 100 queued (recommendation 1), but the highest of the window is still 50:
    t=45 16, t=60 min(50, 32, 20) = 20. The 50 of t=30 leaves the window after t=330, so t=345
    drops straight to 1 (no rate policy applies to a scale-down here).
    """
    scaled_object = shipped()
    del scaled_object["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    scaler = scaler_for(scaled_object)
    replicas = step(scaler, 0, 0, queued=5000)
    assert replicas == 1
    assert step(scaler, 15, 1, queued=5000) == 4
    assert step(scaler, 30, 4, queued=5000) == 8
    assert step(scaler, 45, 8, queued=100) == 16
    assert step(scaler, 60, 16, queued=100) == 20
    for t in range(75, 345, 15):
        assert step(scaler, t, 20, queued=100) == 20, t
    assert step(scaler, 345, 20, queued=100) == 1


def test_without_scaling_modifiers_each_trigger_is_its_own_metric() -> None:
    """No `scalingModifiers`: getScaledObjectMetricSpecs gives the HPA one External metric per
    trigger, each against its own listLength, and computeReplicasForMetrics takes the largest
    proposal.

    listLength: queued 100, inflight 10, pending 100. At 1 replica, queued 250 and inflight 25:
    queued proposes ceil(2.5) = 3, inflight ceil(2.5) = 3, pending 0 -> 3 (a sum against the
    first target would be ceil(275 / 100) = 3 too, so then queued 0, inflight 45: 5 where a
    sum against 100 would say 1). Scale-up limit from 1 is 5 (Pods 4), not reached.
    """
    scaled_object = shipped()
    del scaled_object["spec"]["advanced"]["scalingModifiers"]
    scaled_object["spec"]["triggers"][1]["metadata"]["listLength"] = "10"
    scaler = scaler_for(scaled_object)
    assert step(scaler, 0, 1, queued=250, inflight=25) == 3
    scaler = scaler_for(scaled_object)
    assert step(scaler, 0, 1, inflight=45) == 5


def test_without_scaling_modifiers_any_one_trigger_activates() -> None:
    """getScaledObjectState: without a formula the ScaledObject is active when any scaler is;
    the Redis scaler is active when its length > activationListLength.

    queued activationListLength 10: queued 5 alone leaves 0 replicas at 0; inflight 1 (> 0)
    activates, whatever the others.
    """
    scaled_object = shipped()
    del scaled_object["spec"]["advanced"]["scalingModifiers"]
    scaled_object["spec"]["triggers"][0]["metadata"]["activationListLength"] = "10"
    scaler = scaler_for(scaled_object)
    assert step(scaler, 0, 0, queued=5) == 0
    assert step(scaler, 15, 0, queued=5, inflight=1) == 1


def test_the_formula_value_reaches_keda_in_thousandths() -> None:
    """calculateScalingModifiersFormula stores the value with SetMilli(int64(out * 1000)):
    `queued / 0.9999` for 1 queued run is 1.00010001, kept as 1.000, which is not above an
    activationTarget of 1, so nothing starts."""
    scaled_object = shipped()
    modifiers = scaled_object["spec"]["advanced"]["scalingModifiers"]
    modifiers.update(formula="queued / 0.9999", activationTarget="1")
    scaler = scaler_for(scaled_object)
    assert step(scaler, 0, 0, queued=1) == 0
    assert step(scaler, 15, 0, queued=2) == 1


def test_keda_scales_to_zero_from_any_count_after_the_cooldown() -> None:
    """scaleToZeroOrIdle sets minReplicaCount (0) once LastActiveTime + cooldownPeriod has
    passed, whatever the current count: at 10 replicas with the HPA's 600 s window still holding
    10, the poll 300 s after the last active one sets 0. (LastActiveTime is kept in whole seconds,
    so the poll exactly 300 s later finds it passed.) The ramp to 10 is the burst's: t=15 5,
    t=45 10 (the +4 of t=15 is then 30 s old)."""
    scaler = scaler_for(shipped())
    assert step(scaler, 0, 0, queued=1000) == 1
    assert step(scaler, 15, 1, queued=1000) == 5
    assert step(scaler, 45, 5, queued=1000) == 10
    for t in range(60, 345, 15):
        assert step(scaler, t, 10) == 10, t  # inactive since t=45; the HPA holds 10
    assert step(scaler, 345, 10) == 0
    # Neither KEDA's 10 -> 0 nor its 0 -> 1 is an HPA event, so the next burst starts from 1:
    # Pods 4 allows 5 (counting KEDA's +1 would start from 0 and allow 4).
    assert step(scaler, 360, 0, queued=1000) == 1
    assert step(scaler, 375, 1, queued=1000) == 5


def test_in_flight_runs_keep_the_last_worker() -> None:
    """One long run in flight (inflight 1): the formula's value 1 is above activationTarget 0,
    so LastActiveTime moves at every poll and the cooldown never ends; the HPA proposes
    ceil(1 / 100) = 1, its minReplicas."""
    scaler = scaler_for(shipped())
    for t in range(0, 3600, 15):
        assert step(scaler, t, 1, inflight=1) == 1


def test_a_target_never_active_goes_after_the_initial_cooldown() -> None:
    """scaleToZeroOrIdle: with no LastActiveTime the target goes to 0 once
    creation + initialCooldownPeriod has passed (default 0: at once). Here dev starts (the
    ScaledObject appears) with 2 idle workers and initialCooldownPeriod 60."""
    scaled_object = shipped()
    scaled_object["spec"]["initialCooldownPeriod"] = 60
    scaler = scaler_for(scaled_object)
    assert step(scaler, 0, 2) == 2
    assert step(scaler, 45, 2) == 2
    assert step(scaler, 60, 2) == 0
    del scaled_object["spec"]["initialCooldownPeriod"]
    assert step(scaler_for(scaled_object), 0, 2) == 0


def test_the_hpa_syncs_every_15_seconds_whatever_the_polling_interval() -> None:
    """The HPA controller resyncs every --horizontal-pod-autoscaler-sync-period (15 s) on its
    own; KEDA's pollingInterval only paces KEDA (scale_handler.go startScaleLoop). With
    pollingInterval 30 and 5000 queued runs: t=0 KEDA sets 1; t=15 an HPA sync alone ramps
    1 -> 5 (as in the burst above); t=30 both: 5 (the +4 is 15 s old); t=45 the HPA alone: 10.
    Run once per 30 s poll instead, the HPA would reach 5 only at t=30."""
    scaled_object = shipped()
    scaled_object["spec"]["pollingInterval"] = 30
    config = from_manifests(scaled_object, "test")
    assert (config.polling_interval, config.hpa_sync_period) == (30, 15)
    scaler = Autoscaler(config)
    counts = dict.fromkeys(config.triggers, 0) | {"queued": 5000}
    assert scaler.decide(0, counts, 0).desired == 1
    assert scaler.decide(15, counts, 1, keda=False).desired == 5
    assert scaler.decide(30, counts, 5).desired == 5
    assert scaler.decide(45, counts, 5, keda=False).desired == 10
    # A shorter local poll (`dev --polling-interval 1`) brings the HPA's sync down with it.
    assert config.with_overrides(polling_interval=1).hpa_sync_period == 1
    assert config.with_overrides(polling_interval=60).hpa_sync_period == 15


def test_a_scale_down_period_counts_the_scale_ups_inside_it_even_outdated_ones() -> None:
    """scaleUp Pods 4 / 15 s, scaleDown Pods 1 / 120 s (Min), both windows 0, target 100.

    t=0 (1 replica, 500 runs): 1 + 4 = 5; event A +4.
    t=15 (900 runs, ceil 9): A is 15 s old, not After(now - 15 s): start 5 -> 9; storeScaleEvent
    marks nothing outdated (A is not older than the longest scale-up period) and appends B +4.
    t=45 (1300 runs): start 9 -> 13; A and B are now older than 15 s, both marked outdated
    (markScaleEventsOutdated), and the last outdated slot, B's, is reused for C +4: A stays.
    t=60 (100 runs, ceil 1): calculateScaleDownLimitWithBehaviors counts the scale-ups younger
    than its own 120 s period whatever their outdated flag, A and C: start = 13 - 8 + 0 = 5,
    so Pods 1 allows 4, and the HPA goes 13 -> 4 in one sync.
    """
    scaled_object = shipped()
    behavior = scaled_object["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    behavior["scaleUp"] = {
        "stabilizationWindowSeconds": 0,
        "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}],
    }
    behavior["scaleDown"]["stabilizationWindowSeconds"] = 0
    scaler = scaler_for(scaled_object)
    assert step(scaler, 0, 1, queued=500) == 5
    assert step(scaler, 15, 5, queued=900) == 9
    assert step(scaler, 45, 9, queued=1300) == 13
    assert step(scaler, 60, 13, queued=100) == 4
