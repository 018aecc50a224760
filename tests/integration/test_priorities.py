"""Priorities: each run waits on its priority's list; a worker serves higher lists first by
weight, so high runs overtake a low backlog and the low runs still all finish."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis

from runnable_k8s import RemoteRun, RunnableK8s, Settings, UnknownPriority, WaitTimeout
from runnable_k8s.protocol import priority
from runnable_k8s.store import keys
from runnable_k8s.worker.metrics import WorkerMetrics
from runnable_k8s.worker.priorities import WeightedCycle, watch_depth
from runnable_k8s.worker.rescue import Rescuer
from tests.conftest import make_settings
from tests.support.workers import WorkerProcess, cli

SLOW = "tests.support.refs:slow"


@pytest.fixture
def idle(redis_url: str) -> Settings:
    """A queue no worker consumes: what is enqueued stays where the producer put it."""
    return make_settings(redis_url, rescue_after=1.0)


def _depths(client: redis.Redis, settings: Settings) -> dict[str, int]:
    return {p: int(client.llen(name)) for p, name in priority.lists(settings.queue).items()}


def test_unknown_priority_is_refused_and_nothing_is_enqueued(
    idle: Settings, redis_client: redis.Redis
) -> None:
    with pytest.raises(UnknownPriority, match="'urgent'"):
        RunnableK8s(ref=SLOW, settings=idle, priority="urgent")
    remote = RunnableK8s(ref=SLOW, settings=idle)
    with pytest.raises(UnknownPriority, match="use one of high, normal, low"):
        remote.submit(0, priority="HIGH")
    with pytest.raises(UnknownPriority):
        remote.invoke(0, priority=1)
    assert _depths(redis_client, idle) == {"high": 0, "normal": 0, "low": 0}
    assert redis_client.zcard(keys.pending(idle.queue)) == 0


def test_each_call_lands_on_its_priority_list(idle: Settings, redis_client: redis.Redis) -> None:
    low = RunnableK8s(ref=SLOW, settings=idle, priority="low", timeout=0.2)
    low.submit(0)
    low.submit(0, priority="high")
    with pytest.raises(WaitTimeout):
        low.invoke(0, priority="normal")
    with pytest.raises(WaitTimeout):
        list(low.stream(0, priority="high"))
    assert isinstance(low.batch([0, 0], priority="high", return_exceptions=True)[0], WaitTimeout)
    # Unchanged for runnables without one: the queue's own list, as before priorities.
    RunnableK8s(ref=SLOW, settings=idle).submit(0)
    assert _depths(redis_client, idle) == {"high": 3, "normal": 2, "low": 1}
    assert redis_client.zcard(keys.pending(idle.queue)) == 6


def test_weighted_cycle_leads_by_weight_and_never_starves() -> None:
    cycle = WeightedCycle(["q:low", "q", "q:high"])
    leads = [cycle.consume(3)[0] for _ in range(100)]
    assert (leads.count("q:high"), leads.count("q"), leads.count("q:low")) == (60, 30, 10)
    # No list waits more than one round of ten fetches for its turn to lead.
    assert all("q:low" in leads[i : i + 10] for i in range(0, 91))
    # The rest of each fetch order is highest first.
    assert [o for o in (cycle.consume(3) for _ in range(10)) if o[0] == "q:low"] == [
        ["q:low", "q:high", "q"]
    ]


def test_lost_message_is_rescued_onto_its_own_list(
    idle: Settings, redis_client: redis.Redis
) -> None:
    run = RunnableK8s(ref=SLOW, settings=idle).submit(0, priority="high")
    high = priority.list_name(idle.queue, "high")
    assert redis_client.lrem(high, 1, redis_client.get(keys.message(run.id))) == 1

    async def sweep() -> list[str]:
        client = aredis.Redis.from_url(idle.require_redis_url())
        try:
            await asyncio.sleep(1.1)  # past rescue_after
            return await Rescuer(client, idle.queue, after=1.0, every=1.0).sweep()
        finally:
            await client.aclose()

    assert asyncio.run(sweep()) == [run.id]
    assert _depths(redis_client, idle) == {"high": 1, "normal": 0, "low": 0}


def test_high_runs_overtake_a_low_backlog_and_every_low_run_finishes(
    idle: Settings, logs_dir: Path
) -> None:
    low = RunnableK8s(ref=SLOW, settings=idle, priority="low")
    lows = [low.submit(0) for _ in range(500)]
    highs = [low.submit(0, priority="high") for _ in range(50)]
    # One worker, one run at a time, started after everything is queued: the order in which
    # runs finish is the order in which the worker fetched them.
    worker = WorkerProcess(idle, logs_dir, concurrency=1, name="priorities")
    try:
        worker.wait_ready()
        for run in [*highs, *lows]:
            assert run.result(timeout=240) == "slept 0"
    finally:
        worker.stop()
    finished = sorted(
        (RemoteRun.attach(run.id, idle).status().finished_at or 0.0, level)
        for level, runs in (("high", highs), ("low", lows))
        for run in runs
    )
    order = [level for _, level in finished]
    last_high = max(i for i, level in enumerate(order) if level == "high")
    # Weights 6:3:1 with no normal runs: nine fetches in ten take a high run while any wait.
    assert last_high < 70, order[:80]
    # ...and the low list still gets its turn meanwhile (strict priority would give it none).
    assert order[:last_high].count("low") >= 3, order[:80]
    assert order.count("low") == 500


def test_queue_depth_is_exported_per_priority(idle: Settings) -> None:
    remote = RunnableK8s(ref=SLOW, settings=idle)
    for level, count in (("high", 2), ("low", 3)):
        for _ in range(count):
            remote.submit(0, priority=level)
    metrics = WorkerMetrics()

    async def one_turn() -> None:
        client = aredis.Redis.from_url(idle.require_redis_url())
        try:
            task = asyncio.ensure_future(watch_depth(client, idle.queue, 60.0, metrics))
            await asyncio.sleep(0.5)
            task.cancel()
        finally:
            await client.aclose()

    asyncio.run(one_turn())
    depth = {
        level: metrics.registry.get_sample_value("runnable_k8s_queue_depth", {"priority": level})
        for level in priority.PRIORITIES
    }
    assert depth == {"high": 2.0, "normal": 0.0, "low": 3.0}


def test_cli_submit_takes_a_priority(idle: Settings, redis_client: redis.Redis) -> None:
    done = cli(idle, "submit", "--ref", SLOW, "--input", "0", "--priority", "low")
    assert RemoteRun.attach(done.stdout.strip(), idle).status().state == "queued"
    refused = cli(
        idle, "submit", "--ref", SLOW, "--input", "0", "--priority", "urgent", check=False
    )
    assert refused.returncode != 0 and "'urgent' is not one of" in refused.stderr
    assert _depths(redis_client, idle) == {"high": 0, "normal": 0, "low": 1}
