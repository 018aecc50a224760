"""The KEDA + HPA arithmetic of `runnable-k8s dev`, and reading it from the kustomize files."""

from __future__ import annotations

import pytest

from runnable_k8s.cluster.manifests import default_root
from runnable_k8s.dev.scaling import (
    Autoscaler,
    Policy,
    Rules,
    ScalingConfig,
    load,
    load_base,
    parse_formula,
    read_env_file,
)
from runnable_k8s.errors import ConfigurationError
from runnable_k8s.protocol import keys

FAST_UP = Rules(0.0, (Policy("Percent", 100, 30.0), Policy("Pods", 4, 30.0)), "Max")
SLOW_DOWN = Rules(600.0, (Policy("Pods", 1, 120.0),), "Min")


def config(**changes: object) -> ScalingConfig:
    base = ScalingConfig(
        polling_interval=15,
        cooldown=300,
        min_replicas=0,
        max_replicas=20,
        target=100,
        activation=0,
        scale_up=FAST_UP,
        scale_down=SLOW_DOWN,
    )
    return base.replace(**changes)


def test_base_parameters_are_those_of_the_scaledobject_and_config_env() -> None:
    root = default_root()
    values = read_env_file(root / "base" / "config.env")
    scaling = load_base(root)
    assert scaling.target == float(values["RUNNABLE_K8S_CONCURRENCY"])
    queue = values["RUNNABLE_K8S_QUEUE"]
    assert scaling.triggers == {
        "queued": queue,
        "inflight": "unacked",
        "pending": keys.pending(queue),
    }
    assert scaling.formula == ("queued", "inflight", "pending")
    assert scaling.factors == {"pending": 0.01}
    # One lost run (pending, neither queued nor in flight) activates a worker on its own.
    assert scaling.metric({"queued": 0, "inflight": 0, "pending": 1}) == 0.01
    assert scaling.metric({"queued": 3, "inflight": 2, "pending": 3}) == 5.03
    assert (scaling.polling_interval, scaling.cooldown) == (15, 300)
    assert (scaling.min_replicas, scaling.max_replicas) == (0, 20)
    assert scaling.scale_down == SLOW_DOWN
    assert scaling.scale_up == FAST_UP


@pytest.mark.parametrize(
    ("formula", "names", "factors"),
    [
        ("queued + inflight", ("queued", "inflight"), {}),
        ("queued+inflight+pending/100", ("queued", "inflight", "pending"), {"pending": 0.01}),
        (" a / 2.5 ", ("a",), {"a": 0.4}),
    ],
)
def test_formula_terms_may_be_divided(
    formula: str, names: tuple[str, ...], factors: dict[str, float]
) -> None:
    assert parse_formula(formula) == (names, factors)


@pytest.mark.parametrize("formula", ["queued * 2", "pending / 0", "max(queued, pending)", ""])
def test_other_formulas_are_refused(formula: str) -> None:
    with pytest.raises(ConfigurationError, match="only sums of trigger names"):
        parse_formula(formula)


def test_a_dev_queue_renames_the_keys_that_follow_it() -> None:
    scaling = load_base(default_root()).with_overrides(queue="jobs:llm")
    assert scaling.triggers["queued"] == "jobs:llm"
    assert scaling.triggers["pending"] == "rk8s:pending:jobs:llm"
    assert scaling.triggers["inflight"] == "unacked"


def test_the_dev_overlay_is_rendered_with_kustomize() -> None:
    scaling, values = load(overlay="dev")
    if "kustomize" not in scaling.source:
        pytest.skip("kubectl is not installed: the base files were read")
    assert scaling.max_replicas == 5  # the dev overlay's patch
    assert values["RUNNABLE_K8S_LOG_LEVEL"] == "DEBUG"  # the dev overlay's config.env
    assert scaling.target == float(values["RUNNABLE_K8S_CONCURRENCY"])


def test_idle_stays_at_zero_and_activity_wakes_one_replica() -> None:
    scaler = Autoscaler(config())
    assert scaler.decide(0, 0, 0).desired == 0
    decision = scaler.decide(15, 1, 0)
    assert (decision.desired, decision.active, decision.reason) == (1, True, "activated")


def test_activation_threshold() -> None:
    scaler = Autoscaler(config(activation=5))
    assert scaler.decide(0, 5, 0).desired == 0
    assert scaler.decide(15, 6, 0).desired == 1


def test_desired_is_ceil_of_metric_over_target_within_max() -> None:
    scaler = Autoscaler(config(scale_up=Rules(0.0, (Policy("Pods", 100, 15.0),), "Max")))
    assert scaler.decide(0, 250, 1).desired == 3
    assert scaler.decide(15, 5000, 3).desired == 20  # maxReplicaCount


def test_tolerance_keeps_the_current_count() -> None:
    scaler = Autoscaler(config())
    assert scaler.decide(0, 210, 2).desired == 2  # 210 / 200 = 1.05: within 10 %
    assert scaler.decide(15, 230, 2).desired == 3


def test_scale_up_policies_limit_growth_per_period() -> None:
    scaler = Autoscaler(config())
    # From 1: Percent 100 allows 2, Pods 4 allows 5; selectPolicy Max takes 5.
    assert scaler.decide(0, 2000, 1).desired == 5
    # Still inside the 30 s period that started at 1 replica: no more.
    assert scaler.decide(15, 2000, 5).desired == 5
    # A new period starts from 5: Percent 100 allows 10, Pods 4 allows 9.
    assert scaler.decide(46, 2000, 5).desired == 10


def test_scale_down_waits_for_the_stabilisation_window_then_one_pod_per_period() -> None:
    scaler = Autoscaler(config(scale_up=Rules(0.0, (Policy("Pods", 100, 15.0),), "Max")))
    assert scaler.decide(0, 500, 1).desired == 5
    for t in range(15, 600, 15):
        # Load is gone but the highest recommendation of the last 600 s is still 5.
        assert scaler.decide(t, 10, 5).desired == 5
    assert scaler.decide(615, 10, 5).desired == 4
    assert scaler.decide(630, 10, 4).desired == 4  # one pod per 120 s
    assert scaler.decide(736, 10, 4).desired == 3


def test_last_replica_goes_only_after_the_cooldown() -> None:
    scaler = Autoscaler(config(scale_down=Rules(0.0, (Policy("Percent", 100, 15.0),), "Max")))
    assert scaler.decide(0, 50, 1).desired == 1
    # Nothing queued or in flight: the HPA keeps its minimum of 1 until the cooldown is over.
    assert scaler.decide(15, 0, 1).desired == 1
    assert scaler.decide(299, 0, 1).desired == 1
    assert scaler.decide(300, 0, 1).reason == "cooldown over"
    assert scaler.decide(300, 0, 1).desired == 0


def test_in_flight_runs_keep_the_last_worker() -> None:
    # queued + inflight: a long run is in flight (1) while nothing is queued.
    scaler = Autoscaler(config(cooldown=30))
    for t in range(0, 3600, 15):
        assert scaler.decide(t, 1, 1).desired == 1


def test_activity_restarts_the_cooldown() -> None:
    scaler = Autoscaler(config(cooldown=60, scale_down=Rules(0.0, (), "Max")))
    scaler.decide(0, 10, 1)
    assert scaler.decide(45, 0, 1).desired == 1
    assert scaler.decide(50, 3, 1).desired == 1
    assert scaler.decide(100, 0, 1).desired == 1
    assert scaler.decide(111, 0, 1).desired == 0


def test_min_replicas_above_zero_never_scales_to_zero() -> None:
    scaler = Autoscaler(config(min_replicas=2, cooldown=0, scale_down=Rules(0.0, (), "Max")))
    assert scaler.decide(0, 0, 0).desired == 2
    assert scaler.decide(15, 0, 3).desired == 2


def test_overrides_are_validated() -> None:
    base = config()
    faster = base.with_overrides(polling_interval=1, cooldown=5, target=4, scale_down_window=2)
    assert (faster.polling_interval, faster.cooldown, faster.target) == (1, 5, 4)
    assert faster.scale_down.window == 2
    assert faster.with_overrides(queue="q").triggers["queued"] == "q"
    with pytest.raises(ConfigurationError):
        base.with_overrides(max_replicas=0)
    with pytest.raises(ConfigurationError):
        base.with_overrides(target=0)
    with pytest.raises(ConfigurationError):
        base.with_overrides(min_replicas=30)
