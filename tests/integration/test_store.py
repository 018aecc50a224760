"""The run store's scripts on a real Redis-protocol server: what each state change writes, the
shortcuts the usual path takes (and the cases where it must not), and how many commands the
path of one run costs (`INFO commandstats`, which counts the commands inside a script)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from runnable_k8s.embedded import EmbeddedRedis
from runnable_k8s.producer.client import client_for, new_run_id
from runnable_k8s.protocol.messages import Outcome, Protocol, RunRequest, RunStatus
from runnable_k8s.settings import Settings
from runnable_k8s.store import keys
from runnable_k8s.store.records import RunRecords, digest
from runnable_k8s.store.rescue import Sweeper
from runnable_k8s.store.submit import Enqueuer, Submission, aenqueue, enqueue
from tests.conftest import make_settings

OWNER = "worker-a:delivery-1"
LEASE = 15.0


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A private server: the command counts see only these tests' commands."""
    with EmbeddedRedis() as url:
        yield url


@pytest.fixture
def settings(server: str) -> Settings:
    return make_settings(server, dead_letter_ttl=600.0)


@pytest.fixture
def sync_client(settings: Settings) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(settings.require_redis_url())
    yield connection
    connection.close()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[aredis.Redis]:
    connection = aredis.Redis.from_url(settings.require_redis_url())
    yield connection
    await connection.aclose()


def request(run_id: str | None = None, payload: bytes = b'"hi"') -> RunRequest:
    return RunRequest(
        run_id or new_run_id(), "invoke", "probe", b"", payload, time.time() + 600, ref="x:y"
    )


def records(client: aredis.Redis, settings: Settings) -> RunRecords:
    return RunRecords(
        client, Protocol(settings), ttl=600, queue=settings.queue, dead_letter_ttl=600
    )


def queued_digest(sync_client: redis.Redis, run_id: str) -> str:
    raw = sync_client.get(keys.status(run_id))
    assert isinstance(raw, bytes)
    return digest(raw)


def running(run_id: str) -> RunStatus:
    return RunStatus(run_id, "running", "probe", 1, created_at=1.0, started_at=2.0)


def commands(sync_client: redis.Redis) -> dict[str, int]:
    stats = sync_client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def spent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        name: n - before.get(name, 0)
        for name, n in after.items()
        if n > before.get(name, 0) and name != "info"
    }


def test_enqueue_writes_every_record_of_a_batch_in_order_in_one_script(
    settings: Settings, sync_client: redis.Redis
) -> None:
    protocol = Protocol(settings)
    # More runs than one slice of the script's ZADD/LPUSH (1,000).
    submission = Submission(protocol, [request() for _ in range(1_200)])
    enqueue(sync_client, submission)
    ids = [run_id for _, run_id, _, _ in submission.runs]
    assert sync_client.zcard(keys.pending(settings.queue)) == 1_200
    # Consumers BRPOP from the right end: the first submitted comes out first.
    assert sync_client.lindex(settings.queue, -1) == submission.runs[0][2].encode()
    assert sync_client.lindex(settings.queue, 0) == submission.runs[-1][2].encode()
    for run_id in (ids[0], ids[999], ids[1_000], ids[-1]):
        raw = sync_client.get(keys.status(run_id))
        assert isinstance(raw, bytes)
        status = protocol.open_status(raw, run_id)
        assert status.state == "queued"
        assert 0 < sync_client.ttl(keys.status(run_id)) <= int(settings.result_ttl)
        assert sync_client.get(keys.message(run_id)) is not None
        # It outlives the run however late it starts (`finish` drops it or keeps it).
        assert sync_client.ttl(keys.message(run_id)) > int(settings.result_ttl)


async def test_enqueue_writes_a_large_body_beside_its_message(
    settings: Settings, client: aredis.Redis
) -> None:
    big = request(payload=b'"' + b"x" * 200_000 + b'"')
    submission = Submission(Protocol(settings), [big])
    assert [key for key, _, _ in submission.bodies] == [keys.body(big.run_id)]
    await aenqueue(client, submission)
    assert len(await client.get(keys.body(big.run_id)) or b"") > 200_000
    assert await client.ttl(keys.body(big.run_id)) > 0
    assert await client.zscore(keys.pending(settings.queue), big.run_id) is not None


async def test_a_first_claim_takes_the_run_off_pending_and_keeps_the_message_copy(
    settings: Settings, client: aredis.Redis, sync_client: redis.Redis
) -> None:
    run = request()
    enqueue(sync_client, Submission(Protocol(settings), [run]))
    expected = queued_digest(sync_client, run.run_id)
    store = records(client, settings)
    verdict, written = await store.claim(
        run.run_id, expected, running(run.run_id), owner=OWNER, lease=LEASE, queued=True
    )
    assert verdict == "ok"
    stored = await client.get(keys.status(run.run_id))
    assert isinstance(stored, bytes) and written == digest(stored)
    assert await client.get(keys.lock(run.run_id)) == OWNER.encode()
    assert await client.zscore(keys.pending(settings.queue), run.run_id) is None
    assert await client.exists(keys.message(run.run_id)) == 1

    # A duplicate delivery of the same message is no longer pending: it is compared by digest.
    again, _ = await store.claim(
        run.run_id, expected, running(run.run_id), owner="worker-b:2", lease=LEASE, queued=True
    )
    assert again == "changed"


async def test_a_claim_of_a_run_cancelled_while_queued_finds_it_changed(
    settings: Settings, client: aredis.Redis, sync_client: redis.Redis
) -> None:
    protocol = Protocol(settings)
    run = request()
    enqueue(sync_client, Submission(protocol, [run]))
    expected = queued_digest(sync_client, run.run_id)
    before = client_for(settings).cancel(run.run_id)
    assert isinstance(before, RunStatus) and before.state == "queued"
    verdict, _ = await records(client, settings).claim(
        run.run_id, expected, running(run.run_id), owner=OWNER, lease=LEASE, queued=True
    )
    assert verdict == "changed"
    assert await client.exists(keys.lock(run.run_id)) == 0
    assert await client.exists(keys.message(run.run_id)) == 0


async def test_a_forged_cancellation_of_a_queued_run_does_not_stop_its_first_claim(
    settings: Settings, client: aredis.Redis, sync_client: redis.Redis
) -> None:
    run = request()
    enqueue(sync_client, Submission(Protocol(settings), [run]))
    expected = queued_digest(sync_client, run.run_id)
    await client.set(keys.cancel(run.run_id), b"forged")
    store = records(client, settings)
    verdict, _ = await store.claim(
        run.run_id, expected, running(run.run_id), owner=OWNER, lease=LEASE, queued=True
    )
    assert verdict == "ok"
    # Against any other record the claim still checks: the caller verifies what it finds.
    other = new_run_id()
    await client.set(keys.status(other), b"a record")
    await client.set(keys.cancel(other), b"forged")
    verdict, _ = await store.claim(
        other, digest(b"a record"), running(other), owner=OWNER, lease=LEASE
    )
    assert verdict == "cancelled"


async def test_a_lease_held_by_another_delivery_locks_and_one_without_expiry_is_taken_over(
    settings: Settings, client: aredis.Redis
) -> None:
    store = records(client, settings)
    held, forged = new_run_id(), new_run_id()
    for run_id, ttl in ((held, 10_000), (forged, None)):
        await client.set(keys.status(run_id), b"a record")
        await client.set(keys.lock(run_id), b"worker-b:1", px=ttl)
    verdict, _ = await store.claim(
        held, digest(b"a record"), running(held), owner=OWNER, lease=LEASE
    )
    assert verdict == "locked"
    assert await client.get(keys.lock(held)) == b"worker-b:1"
    verdict, _ = await store.claim(
        forged, digest(b"a record"), running(forged), owner=OWNER, lease=LEASE
    )
    assert verdict == "ok"
    assert await client.get(keys.lock(forged)) == OWNER.encode()
    assert 0 < await client.pttl(keys.lock(forged)) <= LEASE * 1000


async def _claimed(
    settings: Settings, client: aredis.Redis, sync_client: redis.Redis, run: RunRequest
) -> tuple[RunRecords, str]:
    enqueue(sync_client, Submission(Protocol(settings), [run]))
    store = records(client, settings)
    verdict, written = await store.claim(
        run.run_id,
        queued_digest(sync_client, run.run_id),
        running(run.run_id),
        owner=OWNER,
        lease=LEASE,
        queued=True,
    )
    assert verdict == "ok" and written is not None
    return store, written


async def test_finish_drops_the_lease_body_and_message_copy_of_a_run_that_succeeded(
    settings: Settings, client: aredis.Redis, sync_client: redis.Redis
) -> None:
    run = request(payload=b'"' + b"x" * 200_000 + b'"')
    store, written = await _claimed(settings, client, sync_client, run)
    done = RunStatus(run.run_id, "succeeded", "probe", 1, created_at=1.0, finished_at=3.0)
    outcome = Outcome(run.run_id, "succeeded", output=b'"ok"', attempt=1)
    assert await store.finish(written, done, outcome, owner=OWNER)
    run_id = run.run_id
    assert await client.exists(keys.lock(run_id), keys.body(run_id), keys.message(run_id)) == 0
    assert await client.exists(keys.kept_request(run_id), keys.kept_body(run_id)) == 0
    assert await client.zscore(keys.dead_letters(settings.queue), run_id) is None


async def test_finish_keeps_the_request_and_body_of_a_dead_letter(
    settings: Settings, client: aredis.Redis, sync_client: redis.Redis
) -> None:
    run = request(payload=b'"' + b"x" * 200_000 + b'"')
    store, written = await _claimed(settings, client, sync_client, run)
    copy = await client.get(keys.message(run.run_id))
    failed = RunStatus(run.run_id, "failed", "probe", 1, created_at=1.0, finished_at=3.0)
    outcome = Outcome(run.run_id, "failed", reason="boom", attempt=1)
    assert await store.finish(written, failed, outcome, owner=OWNER)
    run_id = run.run_id
    assert await client.exists(keys.lock(run_id), keys.body(run_id), keys.message(run_id)) == 0
    assert await client.get(keys.kept_request(run_id)) == copy
    assert len(await client.get(keys.kept_body(run_id)) or b"") > 200_000
    assert 0 < await client.ttl(keys.kept_request(run_id)) <= 600
    assert await client.zscore(keys.dead_letters(settings.queue), run_id) is not None


async def test_finish_after_another_claim_records_nothing_and_keeps_the_other_lease(
    settings: Settings, client: aredis.Redis, sync_client: redis.Redis
) -> None:
    run = request()
    store, written = await _claimed(settings, client, sync_client, run)
    # The lease lapsed and another delivery claimed the run since.
    await client.set(keys.lock(run.run_id), b"worker-b:2", px=10_000)
    await client.set(keys.status(run.run_id), b"the other claim's record")
    done = RunStatus(run.run_id, "succeeded", "probe", 1, created_at=1.0, finished_at=3.0)
    outcome = Outcome(run.run_id, "succeeded", output=b'"ok"', attempt=1)
    assert not await store.finish(written, done, outcome, owner=OWNER)
    # The write that answered the compare-and-set was put back: the other claim's record stays.
    assert await client.get(keys.status(run.run_id)) == b"the other claim's record"
    assert await client.get(keys.lock(run.run_id)) == b"worker-b:2"
    assert await client.exists(keys.events(run.run_id)) == 0
    assert await client.exists(keys.message(run.run_id)) == 1


async def test_the_sweep_finds_the_message_copy_where_the_producer_wrote_it(
    settings: Settings, client: aredis.Redis, sync_client: redis.Redis
) -> None:
    run = request()
    enqueue(sync_client, Submission(Protocol(settings), [run]))
    assert sync_client.rpop(settings.queue) is not None  # the broker lost it
    rescued = await Sweeper(client, settings.queue).sweep(after=0.0, every=1.0)
    assert rescued == [run.run_id]
    assert sync_client.lindex(settings.queue, -1) == sync_client.get(keys.message(run.run_id))


async def test_one_run_costs_these_commands_on_the_store_path(
    settings: Settings, client: aredis.Redis, sync_client: redis.Redis
) -> None:
    """Enqueue 5 (EVALSHA, SET status, SET copy, ZADD, LPUSH); claim 4 (EVALSHA, ZREM, SET NX,
    SET); finish 5 (EVALSHA, SET with GET, XADD, EXPIRE, DEL). README "Redis commands per
    run"."""
    warm = request()
    store, written = await _claimed(settings, client, sync_client, warm)  # loads the scripts
    done = RunStatus(warm.run_id, "succeeded", "probe", 1, created_at=1.0, finished_at=3.0)
    ok = Outcome(warm.run_id, "succeeded", output=b'"ok"', attempt=1)
    await store.finish(written, done, ok, owner=OWNER)

    run = request()
    steps: dict[str, dict[str, int]] = {}
    before = commands(sync_client)
    enqueue(sync_client, Submission(Protocol(settings), [run]))
    steps["enqueue"], before = spent(before, commands(sync_client)), commands(sync_client)
    expected = queued_digest(sync_client, run.run_id)
    before = commands(sync_client)
    verdict, claimed = await store.claim(
        run.run_id, expected, running(run.run_id), owner=OWNER, lease=LEASE, queued=True
    )
    steps["claim"], before = spent(before, commands(sync_client)), commands(sync_client)
    done = RunStatus(run.run_id, "succeeded", "probe", 1, created_at=1.0, finished_at=3.0)
    ok = Outcome(run.run_id, "succeeded", output=b'"ok"', attempt=1)
    assert claimed is not None
    assert await store.finish(claimed, done, ok, owner=OWNER)
    steps["finish"] = spent(before, commands(sync_client))
    assert verdict == "ok"
    wanted: dict[str, Any] = {
        "enqueue": {"evalsha": 1, "set": 2, "zadd": 1, "lpush": 1},
        "claim": {"evalsha": 1, "zrem": 1, "set": 2},
        "finish": {"evalsha": 1, "xadd": 1, "expire": 1, "set": 1, "del": 1},
    }
    assert steps == wanted


def on_thread(thread_id: str) -> RunRequest:
    run = request()
    run.config["configurable"] = {"thread_id": thread_id}
    return run


def test_a_run_on_a_thread_is_enqueued_by_the_one_script_without_a_transaction(
    settings: Settings, sync_client: redis.Redis
) -> None:
    protocol = Protocol(settings)
    enqueue(sync_client, Submission(protocol, [on_thread("warm-up")]))  # loads the script
    first, second, third = on_thread("t"), on_thread("t"), on_thread("t")
    before = commands(sync_client)
    submission = Submission(protocol, [first])
    (entered,) = submission.entered(Enqueuer(sync_client)(submission))
    # EVALSHA; SET status, SET copy; GET holder, SET holder, SET link; ZADD pending; LPUSH.
    assert spent(before, commands(sync_client)) == {
        "evalsha": 1,
        "set": 4,
        "get": 1,
        "zadd": 1,
        "lpush": 1,
    }
    assert (entered.verdict, entered.holder) == ("started", "")
    assert sync_client.zscore(keys.pending(settings.queue), first.run_id) is not None

    waiting = Submission(protocol, [second])
    (entered,) = waiting.entered(Enqueuer(sync_client)(waiting))
    assert (entered.verdict, entered.holder) == ("waiting", first.run_id)
    assert sync_client.zscore(keys.pending(settings.queue), second.run_id) is None
    assert sync_client.llen(settings.queue) == 2  # the warm-up's and the first's messages

    refused = Submission(protocol, [third], strategy="reject")
    (entered,) = refused.entered(Enqueuer(sync_client)(refused))
    assert (entered.verdict, entered.holder) == ("busy", first.run_id)
    assert sync_client.exists(keys.status(third.run_id), keys.message(third.run_id)) == 0
