"""A producer whose signing key differs from its workers' learns it within seconds; what a
worker writes about a rejection can neither fail nor hide a legitimate run."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from runnable_k8s import RunnableK8s, Settings, SignatureRejected, SigningKeyMismatch
from runnable_k8s.models import DemoChatModel
from runnable_k8s.protocol import rejection, task_message
from runnable_k8s.protocol.messages import Protocol
from runnable_k8s.settings import SigningKey
from runnable_k8s.store import keys
from tests.conftest import make_settings
from tests.support.workers import REPO, WorkerProcess, worker_env

PIKACHU = "What does Pikachu evolve from?"


def other_key(settings: Settings) -> Settings:
    return settings.replace(signing_key=SigningKey(secrets.token_urlsafe(48).encode()))


def status_cli(settings: Settings, run_id: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "runnable_k8s", "status", run_id, "--json"],
        env=worker_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    status: dict[str, object] = json.loads(done.stdout)
    return status


def held_anywhere(client: redis.Redis, queue: str, run_id: str) -> bool:
    """Whether the queue list or kombu's unacked hash still has a message of `run_id`."""
    items = [*client.lrange(queue, 0, -1), *client.hvals(keys.UNACKED)]
    return any(run_id.encode() in item for item in items)


def assert_failed_as_unverified(status: dict[str, object]) -> None:
    assert status["state"] == "failed"
    reason = str(status["reason"])
    assert "could not verify" in reason
    assert "signing keys" in reason
    assert "probably differ" in reason


@pytest.fixture
def keyed(redis_url: str, logs_dir: Path) -> Iterator[tuple[Settings, WorkerProcess]]:
    """A worker that sweeps for lost messages every second."""
    settings = make_settings(redis_url, rescue_after=1.0)
    worker = WorkerProcess(settings, logs_dir, name="keyed")
    worker.wait_ready()
    yield settings, worker
    worker.stop()


def test_a_producer_with_another_key_gets_a_clear_error_and_nothing_loops(
    keyed: tuple[Settings, WorkerProcess], redis_client: redis.Redis
) -> None:
    settings, worker = keyed
    producer = other_key(settings)
    remote = RunnableK8s(bound=DemoChatModel(), settings=producer, timeout=30)

    run = remote.submit(PIKACHU)
    started = time.monotonic()
    with pytest.raises(SigningKeyMismatch, match=r"signing keys .* probably differ") as caught:
        run.result()
    assert time.monotonic() - started < 25  # the 30 s wait was not what ended it
    assert isinstance(caught.value, SignatureRejected)
    assert caught.value.run_id == run.id

    # The asyncio waiter, and a body that travels beside its message.
    large = remote.submit(PIKACHU + " " + "x" * 200_000)
    assert redis_client.exists(keys.body(large.id)) == 1
    with pytest.raises(SigningKeyMismatch):
        asyncio.run(large.aresult())
    assert redis_client.exists(keys.body(large.id), keys.message(large.id)) == 0

    # Fire and forget: nobody waits, and `status` tells what happened.
    unattended = remote.submit(PIKACHU)
    worker.wait_for_log(f"claimed_run={unattended.id} reason=signature mismatch")
    assert_failed_as_unverified(status_cli(producer, unattended.id))
    assert run.status().state == "failed"

    runs = (run.id, large.id, unattended.id)
    # Nothing counts toward scaling any more: not pending, not queued, not held.
    assert redis_client.zcard(keys.pending(settings.queue)) == 0
    for run_id in runs:
        assert not held_anywhere(redis_client, settings.queue, run_id)
    # No sweep pushes them again: each was rejected once, none rescued (while sweeps ran: each
    # takes the sweep lock).
    swept = 0
    deadline = time.monotonic() + 3 * settings.rescue_within
    while time.monotonic() < deadline:
        swept += redis_client.exists(keys.rescue_lock(settings.queue))
        time.sleep(0.1)
    assert swept > 0
    log = worker.log()
    for run_id in runs:
        assert log.count(f"rejected message claimed_run={run_id}") == 1
        assert f"rescued run={run_id}" not in log
    assert "lost by the broker" not in log
    assert worker.process.poll() is None


@pytest.mark.parametrize("where", ["queued", "held"])
def test_a_forged_notice_does_not_fail_a_queued_run(
    redis_url: str, redis_client: redis.Redis, logs_dir: Path, where: str
) -> None:
    """Anyone who can read the queue can compute the digest a worker would name, and can also
    take the run off the pending set and change its message's bytes and delivery tag (as kombu
    re-serializes a message it hands back): while the message is queued, or held by a worker
    that has not started it, the notice does not count."""
    settings = make_settings(redis_url)  # no worker yet
    run = RunnableK8s(bound=DemoChatModel(), settings=settings).submit(PIKACHU)
    copy = redis_client.get(keys.message(run.id))
    assert isinstance(copy, bytes)
    found = task_message.argument_of(copy)
    assert found is not None
    forged = {"k": "x", "d": rejection.digest(found[0].encode(), None), "r": "bad_signature"}
    redis_client.xadd(keys.events(run.id), forged)  # type: ignore[arg-type]
    # The run is no longer pending, and its message no longer has the bytes of the copy.
    assert redis_client.zrem(keys.pending(settings.queue), run.id) == 1
    redelivered = json.loads(copy)
    redelivered["headers"]["redelivered"] = True
    assert redis_client.lrem(settings.queue, 1, copy) == 1
    held = json.dumps([redelivered, "", settings.queue])  # as kombu records a reserved message
    if where == "queued":
        redis_client.lpush(settings.queue, json.dumps(redelivered))
    else:
        redis_client.hset(keys.UNACKED, f"another-tag-{run.id}", held)

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(run.result, 60)
        assert run.status().state == "queued"
        time.sleep(3)  # several looks, each more than a grace period apart
        redis_client.xadd(keys.events(run.id), forged)  # type: ignore[arg-type]
        time.sleep(2)
        assert not waiting.done()
        assert status_cli(settings, run.id)["state"] == "queued"
        if where == "held":  # the worker holding it hands it back, as kombu's restore does
            assert redis_client.hdel(keys.UNACKED, f"another-tag-{run.id}") == 1
            redis_client.lpush(settings.queue, json.dumps(redelivered))
        worker = WorkerProcess(settings, logs_dir, name="late")
        try:
            worker.wait_ready()
            assert "Pichu" in waiting.result(timeout=60).content
        finally:
            worker.stop()
    assert run.status().state == "succeeded"


def test_a_forged_message_under_a_legitimate_id_leaves_its_run_to_be_rescued(
    redis_url: str, redis_client: redis.Redis, logs_dir: Path
) -> None:
    """A message sealed with another key under a queued run's id is rejected; the run stays
    pending, so when the broker loses its real message the sweep still brings it back."""
    settings = make_settings(redis_url, rescue_after=1.0)
    run = RunnableK8s(bound=DemoChatModel(), settings=settings).submit(PIKACHU)
    copy = redis_client.get(keys.message(run.id))
    assert isinstance(copy, bytes)
    found = task_message.argument_of(copy)
    assert found is not None
    request = Protocol(settings).open_request(found[0].encode())
    forged_wire, _ = Protocol(other_key(settings)).seal_request(request)
    forged = task_message.build(
        forged_wire.decode(), run_id=run.id, queue=settings.queue, description="forged"
    )
    # The real message is lost (as if Redis died between a worker's BRPOP and kombu's
    # bookkeeping); the forged one waits in its place.
    assert redis_client.lrem(settings.queue, 1, copy) == 1
    redis_client.lpush(settings.queue, forged)

    worker = WorkerProcess(settings, logs_dir, name="forged")
    try:
        worker.wait_ready()
        assert "Pichu" in run.result(timeout=60).content
        log = worker.wait_for_log(f"rescued run={run.id}")
        assert f"claimed_run={run.id} reason=signature mismatch" in log
        assert log.count(f"started run={run.id}") == 1
    finally:
        worker.stop()
    assert run.status().state == "succeeded"
