"""The KEDA + HPA arithmetic of `runnable-k8s dev`, and reading it from the kustomize files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from runnable_k8s.cluster.manifests import default_root
from runnable_k8s.dev.scaling import (
    Autoscaler,
    Policy,
    Rules,
    ScalingConfig,
    from_manifests,
    load,
    load_base,
    parse_formula,
    split_hold,
)
from runnable_k8s.errors import ConfigurationError
from runnable_k8s.keda import read_config_env, trigger_keys
from runnable_k8s.store import keys
from runnable_k8s.store.limits import WAITING

FAST_UP = Rules(0.0, (Policy("Percent", 100, 30.0), Policy("Pods", 4, 30.0)), "Max")
SLOW_DOWN = Rules(600.0, (Policy("Pods", 1, 120.0),), "Min")
DOWN_AT_ONCE = Rules(0.0, (Policy("Percent", 100, 15.0),), "Max")


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
    values = read_config_env(root / "base" / "config.env")
    scaling = load_base(root)
    assert scaling.target == float(values["RUNNABLE_K8S_CONCURRENCY"])
    queue = values["RUNNABLE_K8S_QUEUE"]
    assert scaling.triggers == {
        "queued": queue,
        "inflight": "unacked",
        "pending": keys.pending(queue),
        "waiting": WAITING,
        "high": f"{queue}:high",
        "low": f"{queue}:low",
    }
    assert scaling.triggers == trigger_keys(queue)
    assert scaling.formula == ("high", "queued", "low", "inflight", "pending")
    assert (scaling.hold_when, scaling.hold_with) == (("waiting", "inflight"), ("inflight",))
    assert scaling.divisors == {"pending": 100}
    idle = {"high": 0, "queued": 0, "low": 0, "inflight": 0, "waiting": 0}
    # One lost run (pending, neither queued nor in flight) activates a worker on its own.
    assert scaling.metric({**idle, "pending": 1}) == 0.01
    assert scaling.metric({**idle, "queued": 3, "inflight": 2, "pending": 3}) == 5.03
    # Every priority's backlog counts, as in the ScaledObject's formula.
    assert scaling.metric({**idle, "high": 2, "low": 3, "pending": 5}) == 5.05
    assert (scaling.polling_interval, scaling.cooldown) == (15, 300)
    assert (scaling.min_replicas, scaling.max_replicas) == (0, 20)
    assert scaling.scale_down == SLOW_DOWN
    assert scaling.scale_up == FAST_UP


@pytest.mark.parametrize(
    ("formula", "names", "divisors"),
    [
        ("queued + inflight", ("queued", "inflight"), {}),
        ("queued+inflight+pending/100", ("queued", "inflight", "pending"), {"pending": 100}),
        (" a / 2.5 ", ("a",), {"a": 2.5}),
    ],
)
def test_formula_terms_may_be_divided(
    formula: str, names: tuple[str, ...], divisors: dict[str, float]
) -> None:
    assert parse_formula(formula) == (names, divisors)


@pytest.mark.parametrize("formula", ["queued * 2", "pending / 0", "max(queued, pending)", ""])
def test_other_formulas_are_refused(formula: str) -> None:
    with pytest.raises(ConfigurationError, match="only sums of trigger names"):
        parse_formula(formula)


def test_calls_waiting_on_limits_hold_the_replicas_the_in_flight_runs_need() -> None:
    scaling = load_base(default_root())
    autoscaler = Autoscaler(scaling)
    backlog = {"high": 0, "queued": 1000, "low": 0, "inflight": 200, "pending": 1000}
    # Without waits the backlog scales out; with calls waiting on a limit, two replicas stay
    # two: more would only wait.
    assert autoscaler.decide(0.0, {**backlog, "waiting": 0}, 2).desired > 2
    held = Autoscaler(scaling).decide(0.0, {**backlog, "waiting": 150}, 2)
    assert (held.metric, held.desired) == (200.0, 2)
    # Waiting entries with nothing in flight (a dead worker's, not yet lapsed) hold nothing.
    assert Autoscaler(scaling).decide(0.0, {**backlog, "inflight": 0, "waiting": 5}, 0).desired


@pytest.mark.parametrize(
    ("formula", "held"),
    [
        ("a > 0 && b > 0 ? b : a + b", (("a", "b"), ("b",), " a + b")),
        ("queued + inflight", ((), (), "queued + inflight")),
    ],
)
def test_a_hold_splits_off_the_formula(
    formula: str, held: tuple[tuple[str, ...], tuple[str, ...], str]
) -> None:
    assert split_hold(formula) == held


@pytest.mark.parametrize("formula", ["a >= 1 ? a : b", "a > 0 ? a / 2 : b", "a > 0 ? b"])
def test_other_holds_are_refused(formula: str) -> None:
    with pytest.raises(ConfigurationError, match=r"supported|plain sum"):
        split_hold(formula)


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


def runs(n: float) -> dict[str, int]:
    """Trigger lengths whose formula (`queued + inflight`) adds up to `n`."""
    return {"queued": int(n), "inflight": 0}


def test_idle_stays_at_zero_and_activity_wakes_one_replica() -> None:
    scaler = Autoscaler(config())
    assert scaler.decide(0, runs(0), 0).desired == 0
    decision = scaler.decide(15, runs(1), 0)
    assert (decision.desired, decision.active, decision.reason) == (1, True, "activated")


def test_activation_threshold() -> None:
    scaler = Autoscaler(config(activation=5))
    assert scaler.decide(0, runs(5), 0).desired == 0
    assert scaler.decide(15, runs(6), 0).desired == 1


def test_desired_is_ceil_of_metric_over_target_within_max() -> None:
    scaler = Autoscaler(config(scale_up=Rules(0.0, (Policy("Pods", 100, 15.0),), "Max")))
    assert scaler.decide(0, runs(250), 1).desired == 3
    assert scaler.decide(15, runs(5000), 3).desired == 20  # maxReplicaCount


def test_tolerance_keeps_the_current_count() -> None:
    scaler = Autoscaler(config())
    assert scaler.decide(0, runs(210), 2).desired == 2  # 210 / 200 = 1.05: within 10 %
    assert scaler.decide(15, runs(230), 2).desired == 3


def test_scale_down_waits_for_the_stabilisation_window_then_one_pod_per_period() -> None:
    scaler = Autoscaler(config(scale_up=Rules(0.0, (Policy("Pods", 100, 15.0),), "Max")))
    assert scaler.decide(0, runs(500), 1).desired == 5
    for t in range(15, 600, 15):
        # Load is gone but the highest recommendation younger than 600 s is still 5.
        assert scaler.decide(t, runs(10), 5).desired == 5
    assert scaler.decide(600, runs(10), 5).desired == 4  # the 5 is exactly 600 s old: out
    assert scaler.decide(615, runs(10), 4).desired == 4  # one pod per 120 s
    assert scaler.decide(720, runs(10), 4).desired == 3


def test_activity_restarts_the_cooldown() -> None:
    scaler = Autoscaler(config(cooldown=60, scale_down=DOWN_AT_ONCE))
    scaler.decide(0, runs(10), 1)
    assert scaler.decide(45, runs(0), 1).desired == 1
    assert scaler.decide(50, runs(3), 1).desired == 1
    assert scaler.decide(100, runs(0), 1).desired == 1
    assert scaler.decide(111, runs(0), 1).desired == 0


def test_min_replicas_above_zero_never_scales_to_zero() -> None:
    scaler = Autoscaler(config(min_replicas=2, cooldown=0, scale_down=DOWN_AT_ONCE))
    assert scaler.decide(0, runs(0), 0).desired == 2
    assert scaler.decide(15, runs(0), 3).desired == 2


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


def shipped() -> dict[str, Any]:
    raw = yaml.safe_load((default_root() / "base" / "scaledobject.yaml").read_text())
    return raw  # type: ignore[no-any-return]


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(scaled_object: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = scaled_object
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value

    return change


BEHAVIOR = "spec.advanced.horizontalPodAutoscalerConfig.behavior"


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        # metricType Value: the HPA multiplies by the ready pods (GetExternalMetricReplicas).
        (_set("spec.advanced.scalingModifiers.metricType", "Value"), "metricType Value"),
        (_set("spec.triggers.0.metricType", "Value"), "metricType Value"),
        # idleReplicaCount changes what KEDA scales to and from (scaleFromZeroOrIdle).
        (_set("spec.idleReplicaCount", 0), "idleReplicaCount"),
        # fallback replaces the metric while a scaler fails.
        (_set("spec.fallback", {"failureThreshold": 3, "replicas": 2}), "fallback"),
        # The pause annotations stop KEDA or disable an HPA direction (hpa.go, RequestScale).
        (_set("metadata.annotations", {"autoscaling.keda.sh/paused": "true"}), "paused"),
        (
            _set("metadata.annotations", {"autoscaling.keda.sh/paused-replicas": "2"}),
            "paused-replicas",
        ),
        (
            _set("metadata.annotations", {"autoscaling.keda.sh/paused-scale-in": "true"}),
            "paused-scale-in",
        ),
        (
            _set("metadata.annotations", {"autoscaling.keda.sh/paused-scale-out": "true"}),
            "paused-scale-out",
        ),
        (
            _set("metadata.annotations", {"autoscaling.keda.sh/force-activation": "true"}),
            "force-activation",
        ),
        (_set("spec.triggers.0.type", "redis-streams"), "redis-streams"),
        (_set("spec.triggers.0.metadata.streamName", "s"), "streamName"),
        (_set("spec.triggers.0.metadata.listLength", "2.5"), "listLength"),
        (_set("spec.advanced.scalingModifiers.somethingNew", "1"), "somethingNew"),
        (_set(f"{BEHAVIOR}.scaleUp.somethingNew", 1), "somethingNew"),
        (_set("spec.somethingNew", 1), "somethingNew"),
    ],
)
def test_fields_dev_does_not_model_are_refused(
    change: Callable[[dict[str, Any]], None], refused: str
) -> None:
    scaled_object = shipped()
    change(scaled_object)
    with pytest.raises(ConfigurationError, match=refused):
        from_manifests(scaled_object, "test")


def test_fields_dev_models_are_read() -> None:
    scaled_object = shipped()
    _set("spec.initialCooldownPeriod", 45)(scaled_object)
    _set(f"{BEHAVIOR}.scaleUp.tolerance", "0.05")(scaled_object)
    _set(f"{BEHAVIOR}.scaleDown.tolerance", 0.2)(scaled_object)
    _set("metadata.annotations", {"team": "ml"})(scaled_object)
    config = from_manifests(scaled_object, "test")
    assert config.initial_cooldown == 45
    assert (config.scale_up.tolerance, config.scale_down.tolerance) == (0.05, 0.2)
    assert config.modifiers and config.behavior


def test_a_partial_behavior_is_completed_with_the_api_servers_defaults() -> None:
    """defaults.go copyHPAScalingRules: a direction left out takes the default rules whole; a
    rule's missing field takes the default's (scaleUp: window 0, Pods 4 and Percent 100 per 15 s,
    Max; scaleDown: the controller's 300 s window, Percent 100 per 15 s, Max)."""
    scaled_object = shipped()
    del scaled_object["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]
    _set(f"{BEHAVIOR}.scaleDown", {"selectPolicy": "Min"})(scaled_object)
    config = from_manifests(scaled_object, "test")
    assert config.scale_up == Rules(
        0.0, (Policy("Pods", 4, 15.0), Policy("Percent", 100, 15.0)), "Max"
    )
    assert config.scale_down == Rules(300.0, (Policy("Percent", 100, 15.0),), "Min")
