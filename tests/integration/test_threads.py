"""One run at a time per LangGraph thread, on real workers and a real Redis, with LangGraph's
multitask strategies (enqueue, reject, interrupt, rollback).

The graph (tests/support/threaded.py) adds one to a counter per step on a SQLite checkpointer
every worker shares, and logs when each step enters and leaves: two runs of a thread that
overlapped would both read the same count (a lost update) and show interleaved entries."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from runnable_k8s import (
    RunCancelled,
    RunExpired,
    RunnableK8s,
    Settings,
    ThreadBusy,
    UnknownMultitaskStrategy,
)
from runnable_k8s.cluster.manifests import default_root
from runnable_k8s.dev.scaledobject import load_base
from runnable_k8s.keda import trigger_lengths
from runnable_k8s.store import keys, threads
from tests.conftest import make_settings
from tests.support.threaded import read_log
from tests.support.workers import WorkerProcess, cli

REF = "tests.support.threaded:counter"


@dataclass
class Threads:
    settings: Settings
    log: Path
    workers: list[WorkerProcess]

    def remote(self, **kwargs: Any) -> RunnableK8s[Any, Any]:
        return RunnableK8s(ref=REF, settings=self.settings, **kwargs)

    def entries(self, thread: str) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [e for e in read_log(str(self.log)) if e["thread"] == thread]

    def worker_log(self) -> str:
        return "".join(w.log() for w in self.workers)


def config(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}}


def new_thread() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def assert_never_overlapped(entries: list[dict[str, Any]]) -> None:
    """Each step's enter is followed by its own exit before anything else of the thread."""
    ordered = sorted(entries, key=lambda e: e["at"])
    for first, second in zip(ordered[::2], ordered[1::2], strict=True):
        assert (first["event"], second["event"]) == ("enter", "exit"), ordered
        assert first["label"] == second["label"], ordered


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def env(
    redis_url: str, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Threads]:
    folder = tmp_path_factory.mktemp("threads")
    settings = make_settings(redis_url, allowed_refs=("tests.support.threaded:",))
    extra = {
        "RK8S_TEST_SQLITE_DB": str(folder / "checkpoints.sqlite"),
        "RK8S_TEST_THREAD_LOG": str(folder / "steps.log"),
    }
    workers = [
        WorkerProcess(settings, logs_dir, concurrency=2, env=extra, name=f"threads-{i}")
        for i in range(2)
    ]
    try:
        for worker in workers:
            worker.wait_ready(timeout=120)
        yield Threads(settings, folder / "steps.log", workers)
    finally:
        for worker in workers:
            worker.stop()


def test_six_concurrent_runs_on_one_thread_across_two_workers_lose_no_update(
    env: Threads,
) -> None:
    thread = new_thread()
    remote = env.remote()

    def one(i: int) -> Any:
        return remote.invoke({"nap": 0.3, "label": f"r{i}", "steps": 1}, config(thread))

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    assert sorted(r["count"] for r in results) == [1, 2, 3, 4, 5, 6]
    entries = env.entries(thread)
    assert len(entries) == 12
    assert_never_overlapped(entries)


def test_enqueue_runs_a_threads_runs_in_submission_order(env: Threads) -> None:
    thread = new_thread()
    remote = env.remote()
    runs = [
        remote.submit({"nap": 0.2, "label": f"r{i}", "steps": 1}, config(thread)) for i in range(4)
    ]
    assert [run.result(timeout=60)["count"] for run in runs] == [1, 2, 3, 4]


def test_a_run_waiting_for_its_thread_holds_no_worker_slot(
    env: Threads, redis_client: redis.Redis
) -> None:
    busy = new_thread()
    remote = env.remote()
    # Four slots in all. The first run holds one; the two behind it wait in Redis, not in a
    # slot, so the four runs of other threads all get one at once.
    first = remote.submit({"nap": 6, "label": "first", "steps": 1}, config(busy))
    behind = [
        remote.submit({"nap": 0.1, "label": f"b{i}", "steps": 1}, config(busy)) for i in range(2)
    ]
    wait_until(lambda: env.entries(busy), 20, "the first run to start")
    waiting = threads.waiting_key(env.settings.queue, busy)
    assert [m.decode() for m in redis_client.lrange(waiting, 0, -1)] == [r.id for r in behind]
    others = [new_thread() for _ in range(3)]
    started = time.time()
    free = [remote.submit({"nap": 1.5, "label": "other", "steps": 1}, config(t)) for t in others]
    for run in free:
        assert run.result(timeout=30)["count"] == 1
    entries = [e for t in others for e in env.entries(t)]
    # All three ran side by side while the first run went on.
    first_exit = [e for e in env.entries(busy) if e["event"] == "exit"]
    assert not first_exit, "the other threads' runs had to wait for the busy thread"
    assert max(e["at"] for e in entries if e["event"] == "enter") < started + 1.5
    # Neither a queued message nor a delivery for the runs behind: not in Celery at all.
    assert redis_client.llen(env.settings.queue) == 0
    assert [r.status().state for r in behind] == ["queued", "queued"]
    assert [run.result(timeout=60)["count"] for run in [first, *behind]] == [1, 2, 3]
    assert_never_overlapped(env.entries(busy))


def test_keda_counts_one_run_for_a_hundred_queued_behind_one_thread(
    env: Threads, redis_client: redis.Redis
) -> None:
    thread = new_thread()
    remote = env.remote()
    first = remote.submit({"nap": 3, "label": "first", "steps": 1}, config(thread))
    wait_until(lambda: env.entries(thread), 20, "the first run to start")
    behind = [
        remote.submit({"nap": 0, "label": "behind", "steps": 1}, config(thread)) for _ in range(100)
    ]
    scaling = load_base(default_root()).with_overrides(queue=env.settings.queue)
    lengths = trigger_lengths(redis_client, scaling.triggers)
    # What KEDA (and `runnable-k8s dev`) see: the runs in flight (the first, and perhaps one
    # of an earlier test's still being acknowledged), nothing queued, nothing pending: the 100
    # waiting runs add nothing to the metric.
    assert lengths.get("queued", 0) == 0
    assert lengths.get("pending", 0) == 0
    assert 1 <= lengths["inflight"] <= 3
    assert scaling.metric(lengths) == lengths["inflight"]
    assert redis_client.llen(threads.waiting_key(env.settings.queue, thread)) == 100
    # Cancelling them all empties the line; the thread is free once the first run ends.
    for run in behind:
        run.cancel()
    assert redis_client.llen(threads.waiting_key(env.settings.queue, thread)) == 0
    assert first.result(timeout=30)["count"] == 1
    wait_until(
        lambda: redis_client.get(threads.thread_key(env.settings.queue, thread)) is None,
        10,
        "the thread to be free",
    )
    assert remote.invoke({"nap": 0, "label": "after", "steps": 1}, config(thread))["count"] == 2


def test_cancelling_or_expiring_a_waiting_run_takes_it_out_of_line(
    env: Threads, redis_client: redis.Redis
) -> None:
    thread = new_thread()
    remote = env.remote()
    soon = RunnableK8s(ref=REF, settings=env.settings.replace(run_expiry=1.0))
    first = remote.submit({"nap": 3, "label": "first", "steps": 1}, config(thread))
    cancelled = remote.submit({"nap": 0, "label": "cancelled", "steps": 1}, config(thread))
    expiring = soon.submit({"nap": 0, "label": "expiring", "steps": 1}, config(thread))
    last = remote.submit({"nap": 0, "label": "last", "steps": 1}, config(thread))
    waiting = threads.waiting_key(env.settings.queue, thread)
    assert [r.thread_position() for r in (first, cancelled, expiring, last)] == [0, 1, 2, 3]
    cancelled.cancel()
    assert [m.decode() for m in redis_client.lrange(waiting, 0, -1)] == [expiring.id, last.id]
    assert [r.thread_position() for r in (cancelled, expiring, last)] == [None, 1, 2]
    with pytest.raises(RunCancelled):
        cancelled.result(timeout=5)
    assert first.result(timeout=30)["count"] == 1
    with pytest.raises(RunExpired):
        expiring.result(timeout=30)
    assert last.result(timeout=30)["count"] == 2
    labels = {e["label"] for e in env.entries(thread)}
    assert labels == {"first", "last"}


def test_reject_refuses_a_run_on_a_busy_thread_and_enqueues_nothing(
    env: Threads, redis_client: redis.Redis
) -> None:
    thread = new_thread()
    # Long enough for the CLI (a new process) to find it still running on a loaded machine.
    first = env.remote().submit({"nap": 60, "label": "first", "steps": 1}, config(thread))
    strict = env.remote(multitask_strategy="reject")
    with pytest.raises(ThreadBusy) as caught:
        strict.invoke({"nap": 0, "label": "refused", "steps": 1}, config(thread))
    assert caught.value.active_run_id == first.id
    refused = caught.value.run_id
    assert refused is not None
    assert not redis_client.exists(keys.status(refused), keys.message(refused))
    assert redis_client.llen(threads.waiting_key(env.settings.queue, thread)) == 0
    # `status` shows a waiting run's place in its thread's line.
    behind = env.remote().submit({"nap": 0, "label": "behind", "steps": 1}, config(thread))
    assert "thread_line: 1" in cli(env.settings, "status", behind.id).stdout
    behind.cancel()
    # The same from the CLI: a clear line and a non-zero exit.
    args = ["submit", REF, "--ref", "--thread", thread, "--input", '{"steps": 1}']
    refused_cli = cli(env.settings, *args, "--multitask-strategy", "reject", check=False)
    assert refused_cli.returncode != 0
    assert f"its thread is busy with run {first.id}" in refused_cli.stderr
    first.cancel()
    with pytest.raises(RunCancelled):
        first.result(timeout=30)
    # The worker hands the thread on just after recording the outcome the caller saw.
    wait_until(
        lambda: redis_client.get(threads.thread_key(env.settings.queue, thread)) is None,
        10,
        "the thread to be free",
    )
    # Free again: the same call goes through (the cancelled step never checkpointed).
    after = strict.invoke({"nap": 0, "label": "accepted", "steps": 1}, config(thread))
    assert after["count"] == 1


def test_interrupt_stops_the_active_run_keeping_its_steps(env: Threads) -> None:
    thread = new_thread()
    remote = env.remote()
    long = remote.submit({"nap": 1.0, "label": "long", "steps": 20}, config(thread))
    wait_until(lambda: sum(e["event"] == "exit" for e in env.entries(thread)) >= 2, 30, "two steps")
    after = remote.invoke(
        {"nap": 0, "label": "new", "steps": 1}, config(thread), multitask_strategy="interrupt"
    )
    with pytest.raises(RunCancelled):
        long.result(timeout=10)
    kept = sum(e["event"] == "exit" and e["label"] == "long" for e in env.entries(thread))
    assert 2 <= kept < 20
    # The new run starts from the interrupted run's last checkpoint.
    assert after["count"] in (kept, kept + 1)
    assert_never_overlapped([e for e in env.entries(thread) if e["label"] == "new"])


def test_rollback_discards_the_active_runs_checkpoints(env: Threads) -> None:
    thread = new_thread()
    remote = env.remote()
    assert remote.invoke({"nap": 0, "label": "before", "steps": 1}, config(thread))["count"] == 1
    long = remote.submit({"nap": 1.0, "label": "long", "steps": 20}, config(thread))
    wait_until(
        lambda: (
            sum(e["label"] == "long" and e["event"] == "exit" for e in env.entries(thread)) >= 2
        ),
        30,
        "two steps",
    )
    after = remote.invoke(
        {"nap": 0, "label": "new", "steps": 1}, config(thread), multitask_strategy="rollback"
    )
    with pytest.raises(RunCancelled):
        long.result(timeout=10)
    # As if the cancelled run had never run: 1 (before) + 1.
    assert after["count"] == 2


def test_an_unknown_strategy_fails_at_construction_and_at_the_call(env: Threads) -> None:
    with pytest.raises(UnknownMultitaskStrategy, match="enqueue, reject, interrupt, rollback"):
        env.remote(multitask_strategy="queue")  # type: ignore[arg-type]
    with pytest.raises(UnknownMultitaskStrategy):
        env.remote().invoke({"steps": 1}, config(new_thread()), multitask_strategy="later")
    with pytest.raises(UnknownMultitaskStrategy):
        env.remote().submit({"steps": 1}, config(new_thread()), multitask_strategy="x")  # type: ignore[arg-type]


def test_asyncio_callers_take_turns_too_and_reject_when_busy(env: Threads) -> None:
    thread = new_thread()
    remote = env.remote()

    async def main() -> list[Any]:
        calls = [
            remote.ainvoke({"nap": 0.2, "label": f"a{i}", "steps": 1}, config(thread))
            for i in range(4)
        ]
        results = await asyncio.gather(*calls)
        first = await remote.asubmit({"nap": 30, "label": "long", "steps": 1}, config(thread))
        with pytest.raises(ThreadBusy):
            async for _ in remote.astream(
                {"steps": 1}, config(thread), multitask_strategy="reject"
            ):
                pass
        await first.acancel()
        return results

    results = asyncio.run(main())
    assert sorted(r["count"] for r in results) == [1, 2, 3, 4]
    assert_never_overlapped([e for e in env.entries(thread) if e["label"] != "long"])


def test_batch_inputs_on_one_thread_run_one_at_a_time_in_order(env: Threads) -> None:
    thread = new_thread()
    outputs = env.remote().batch(
        [{"nap": 0.2, "label": f"b{i}", "steps": 1} for i in range(3)], config(thread)
    )
    assert [o["count"] for o in outputs] == [1, 2, 3]
    assert_never_overlapped(env.entries(thread))


def test_revoking_a_waiting_run_from_celery_control_takes_it_out_of_line(
    env: Threads, redis_client: redis.Redis
) -> None:
    thread = new_thread()
    remote = env.remote()
    first = remote.submit({"nap": 30, "label": "first", "steps": 1}, config(thread))
    waiting = remote.submit({"nap": 0, "label": "revoked", "steps": 1}, config(thread))
    app = Celery("monitor", broker=env.settings.require_redis_url(), set_as_current=False)
    try:
        app.control.revoke(waiting.id)  # what Flower sends
    finally:
        app.close()
    wait_until(lambda: waiting.status().state == "cancelled", 30, "the revoked run cancelled")
    assert redis_client.llen(threads.waiting_key(env.settings.queue, thread)) == 0
    first.cancel()
    with pytest.raises(RunCancelled):
        first.result(timeout=30)
    assert "revoked" not in {e["label"] for e in env.entries(thread)}
