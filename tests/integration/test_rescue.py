"""A message the broker loses (neither queued nor held by a worker) is enqueued again from
the copy the producer kept, and the run completes exactly once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis

from runnable_k8s import RemoteRun, RunnableK8s, Settings
from runnable_k8s.models import DemoChatModel
from runnable_k8s.producer.client import new_run_id
from runnable_k8s.protocol import task_message
from runnable_k8s.store import keys
from runnable_k8s.worker.rescue import Rescuer
from tests.conftest import make_settings
from tests.support.workers import WorkerProcess


@pytest.fixture
def rescuing(redis_url: str) -> Settings:
    return make_settings(redis_url, rescue_after=1.0)


def test_lost_message_is_rescued(
    rescuing: Settings, redis_client: redis.Redis, logs_dir: Path
) -> None:
    remote = RunnableK8s(bound=DemoChatModel(), settings=rescuing)
    lost = remote.submit("What does Pikachu evolve from?")
    kept = remote.submit("Eevee?")
    # As if Redis died between a worker's BRPOP and kombu recording the message as unacked:
    # the message of `lost` is gone from the queue, and nobody holds it.
    assert redis_client.lrem(rescuing.queue, 1, redis_client.get(keys.message(lost.id))) == 1
    assert redis_client.llen(rescuing.queue) == 1
    worker = WorkerProcess(rescuing, logs_dir, name="rescuer")
    try:
        worker.wait_ready()
        assert "Pichu" in lost.result(timeout=60).content
        assert "Eevee" in kept.result(timeout=60).content
        worker.wait_for_log(f"rescued run={lost.id}")
        assert f"rescued run={kept.id}" not in worker.log()
        # Claimed runs leave the pending set and drop their message copy.
        assert redis_client.zscore(keys.pending(rescuing.queue), lost.id) is None
        assert not redis_client.exists(keys.message(lost.id), keys.message(kept.id))
        assert worker.log().count(f"started run={lost.id}") == 1
        assert RemoteRun.attach(lost.id, rescuing).status().attempt == 1
    finally:
        worker.stop()


def test_queued_cancel_is_no_longer_pending(rescuing: Settings, redis_client: redis.Redis) -> None:
    run = RunnableK8s(bound=DemoChatModel(), settings=rescuing).submit("never runs")
    assert redis_client.zscore(keys.pending(rescuing.queue), run.id) is not None
    run.cancel()
    assert redis_client.zscore(keys.pending(rescuing.queue), run.id) is None
    assert not redis_client.exists(keys.message(run.id))


def test_a_hostile_message_copy_does_not_stop_the_rescue_of_others(redis_url: str) -> None:
    queue = f"rescue-{uuid.uuid4().hex[:8]}"
    good, poison = new_run_id(), new_run_id()
    lost = task_message.build("x", run_id=good, queue=queue, description="t")

    async def scenario() -> list[str]:
        client = aredis.Redis.from_url(redis_url)
        try:
            # A genuine run whose message the broker lost: copy kept, neither queued nor held.
            await client.set(keys.message(good), lost)
            # The attacker's entry (a copy that is not a message object), sorted first.
            await client.set(keys.message(poison), b"5")
            await client.zadd(keys.pending(queue), {poison: 0, good: 1})
            return await Rescuer(client, queue, after=0.0, every=1.0).sweep()
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [good]
    # The kept copy is back on the queue, byte for byte, and nothing of the attacker's is.
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.lrange(queue, 0, -1) == [lost.encode()]
    finally:
        client.close()
