"""The dev autoscaler with real workers: busy workers are never stopped, idle ones go."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from runnable_k8s import RunnableK8s
from runnable_k8s.dev.scaling import Policy, Rules, ScalingConfig
from runnable_k8s.dev.session import DevSession
from runnable_k8s.keda import trigger_lengths
from runnable_k8s.models import DemoChatModel
from runnable_k8s.settings import Settings
from runnable_k8s.store import keys
from tests.conftest import make_settings
from tests.reliability.conftest import result_of, wait_until
from tests.support.models import SlowModel
from tests.support.workers import REPO, worker_env


def fast_scaling(settings: Settings, **changes: object) -> ScalingConfig:
    """The ScaledObject's shape with seconds instead of minutes."""
    config = ScalingConfig(
        polling_interval=0.3,
        cooldown=1.0,
        min_replicas=0,
        max_replicas=2,
        target=1,
        triggers={"queued": settings.queue, "inflight": keys.UNACKED},
        scale_up=Rules(0.0, (Policy("Pods", 4, 1.0),), "Max"),
        scale_down=Rules(0.0, (Policy("Pods", 1, 0.5),), "Min"),
        source="test",
    )
    return config.replace(**changes)


def session_for(settings: Settings, config: ScalingConfig, log_dir: Path) -> DevSession:
    env = worker_env(settings, {"PYTHONPATH": str(REPO)})
    return DevSession(settings, config, log_dir, base_env=env, restart_backoff=1.0)


def test_trigger_lengths_count_by_key_type(own_redis: redis.Redis) -> None:
    own_redis.lpush("q", "a", "b")
    own_redis.hset("h", mapping={"x": "1"})
    own_redis.zadd("z", {"m": 1.0})
    own_redis.sadd("s", "m", "n", "o")
    lengths = trigger_lengths(own_redis, {"a": "q", "b": "h", "c": "z", "d": "s", "e": "none"})
    assert lengths == {"a": 2, "b": 1, "c": 1, "d": 3, "e": 0}


def test_a_trigger_key_of_another_type_is_an_error_not_zero(own_redis: redis.Redis) -> None:
    """redis_scaler.go's script answers `ERR unsupported key type` for a string or a stream, so
    KEDA reports the scaler as failing (and keeps the replica count) instead of reading 0."""
    own_redis.set("s", "not a list")
    with pytest.raises(redis.ResponseError, match="unsupported key type: string"):
        trigger_lengths(own_redis, {"a": "s"})


@pytest.mark.timeout(90)
def test_scale_to_zero_waits_for_the_run_in_flight(own_redis_url: str, tmp_path: Path) -> None:
    settings = make_settings(own_redis_url, time_limit=30.0)
    session = session_for(settings, fast_scaling(settings, max_replicas=1), tmp_path)
    offset = time.time() - time.monotonic()
    with session:
        run = RunnableK8s(bound=SlowModel(delay=6.0), settings=settings).submit("long")
        assert result_of(run, 60).content == "echo: long"
        finished_at = run.status().finished_at
        assert finished_at is not None  # (a default of 0 would make the check below vacuous)
        wait_until(
            lambda: session.pool.replicas == 0 and not session.pool.workers,
            30,
            "scaled back to zero",
        )
        pool = session.pool
        assert len(pool.retired) == 1
        worker = pool.retired[0]
        assert worker.exit_code == 0
        # The cooldown is 1 s and the queue list was empty for the whole run, but the run was
        # in flight (kombu's unacked hash): the stop came only after it finished.
        assert worker.stop_requested_at is not None
        assert worker.stop_requested_at + offset >= finished_at
        busy = [s for s in session.controller.samples if s.lengths.get("inflight")]
        assert busy and all(s.replicas == 1 for s in busy)


@pytest.mark.timeout(120)
def test_scales_out_on_a_burst_then_back_to_zero(own_redis_url: str, tmp_path: Path) -> None:
    settings = make_settings(own_redis_url, time_limit=30.0)
    config = fast_scaling(settings, max_replicas=3, target=4)
    with session_for(settings, config, tmp_path) as session:
        remote = RunnableK8s(bound=SlowModel(delay=1.0), settings=settings)
        runs = [remote.submit(f"q{i}") for i in range(24)]
        for i, run in enumerate(runs):
            assert result_of(run, 90).content == f"echo: q{i}"
        peak = max(s.replicas for s in session.controller.samples)
        assert peak == 3  # ceil(24 / 4) = 6, capped at maxReplicaCount
        wait_until(lambda: not session.pool.workers, 40, "back to zero")
        assert all(w.exit_code == 0 for w in session.pool.retired)
        assert session.pool.counts["done"] == 24


@pytest.mark.timeout(120)
@pytest.mark.parametrize("counts_pending", [True, False], ids=["pending-trigger", "no-trigger"])
def test_a_lost_message_brings_a_worker_back_only_with_the_pending_trigger(
    own_redis_url: str, own_redis: redis.Redis, tmp_path: Path, counts_pending: bool
) -> None:
    """A message the broker lost is neither queued nor in flight. With the manifests' third
    trigger (the pending set, divided by 100) the autoscaler still starts a worker, whose
    rescue sweep enqueues the kept copy and runs it; without it, with a cooldown far below
    the rescue window, nothing would ever run it."""
    settings = make_settings(own_redis_url, rescue_after=1.0)
    triggers = {"queued": settings.queue, "inflight": keys.UNACKED}
    formula: tuple[str, ...] = ("queued", "inflight")
    if counts_pending:
        triggers["pending"] = keys.pending(settings.queue)
        formula = (*formula, "pending")
    config = fast_scaling(
        settings, max_replicas=1, triggers=triggers, formula=formula, divisors={"pending": 100}
    )
    run = RunnableK8s(bound=DemoChatModel(), settings=settings).submit("Pikachu?")
    # As if Redis died between a worker's BRPOP and kombu's unacked record (before the
    # autoscaler starts, so that no poll sees the message queued).
    message = own_redis.get(keys.message(run.id))
    assert own_redis.lrem(settings.queue, 1, message) == 1
    with session_for(settings, config, tmp_path) as session:
        if not counts_pending:
            time.sleep(5 * config.polling_interval + 1.0)  # well past the rescue window
            assert session.pool.replicas == 0 and not session.pool.workers
            assert run.status().state == "queued"
            return
        assert "Pichu" in result_of(run, 60).content
        first = next(s for s in session.controller.samples if s.replicas)
        assert first.lengths == {"queued": 0, "inflight": 0, "pending": 1}
        assert first.metric == 0.01
        wait_until(lambda: not session.pool.workers, 30, "back to zero")
        assert own_redis.zcard(keys.pending(settings.queue)) == 0
        assert session.pool.counts["done"] == 1
