"""`RunRecords.finish` against a real Redis-protocol server, on both of its paths: small
outcomes appended by the script, large ones by a plain XADD in the same transaction that the
script takes back when the status changed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aredis
from redis.exceptions import ResponseError

from runnable_k8s.producer.client import new_run_id
from runnable_k8s.protocol.messages import Outcome, Protocol, RunStatus
from runnable_k8s.settings import Settings
from runnable_k8s.store import keys
from runnable_k8s.store.records import LARGE_OUTCOME, RunRecords, digest
from tests.conftest import make_settings

OWNER = "worker-a:delivery-1"
SIZES = {"small": 100, "large": LARGE_OUTCOME * 16}


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[aredis.Redis]:
    connection = aredis.Redis.from_url(settings.require_redis_url())
    yield connection
    await connection.aclose()


def records(client: aredis.Redis, settings: Settings) -> RunRecords:
    return RunRecords(client, Protocol(settings), ttl=600, queue=settings.queue)


async def running(client: aredis.Redis, protocol: Protocol) -> RunStatus:
    """A new run as a worker holds it: a "running" record, a lease and a stored body."""
    run_id = new_run_id()
    status = RunStatus(run_id, "running", "probe", 1, created_at=1.0, started_at=2.0)
    await client.set(keys.status(run_id), protocol.seal_status(status))
    await client.set(keys.lock(run_id), OWNER, px=15_000)
    await client.set(keys.body(run_id), b"the request body")
    return status


def outcome_of(status: RunStatus, size: int) -> Outcome:
    """A successful outcome whose output is `size` bytes and one."""
    return Outcome(status.run_id, "succeeded", output=b"\x00" + b"y" * size, attempt=1)


def finished(status: RunStatus) -> RunStatus:
    return RunStatus(status.run_id, "succeeded", "probe", 1, created_at=1.0, finished_at=3.0)


@pytest.mark.parametrize("size", SIZES.values(), ids=list(SIZES))
async def test_finish_records_outcome_status_and_cleans_up(
    client: aredis.Redis, settings: Settings, size: int
) -> None:
    protocol = Protocol(settings)
    status = await running(client, protocol)
    run_id, outcome = status.run_id, outcome_of(status, size)
    output = outcome.output
    expected = digest(protocol.seal_status(status))

    assert await records(client, settings).finish(expected, finished(status), outcome, owner=OWNER)

    entries = await client.xrange(keys.events(run_id))
    assert len(entries) == 1
    assert protocol.open_outcome(entries[0][1][b"m"], run_id).output == output
    stored = await client.get(keys.status(run_id))
    assert protocol.open_status(stored, run_id).state == "succeeded"
    assert await client.exists(keys.body(run_id), keys.lock(run_id)) == 0
    assert 0 < await client.ttl(keys.events(run_id)) <= 600


@pytest.mark.parametrize("size", SIZES.values(), ids=list(SIZES))
async def test_finish_on_a_changed_status_records_nothing_and_releases_the_lease(
    client: aredis.Redis, settings: Settings, size: int
) -> None:
    protocol = Protocol(settings)
    status = await running(client, protocol)
    run_id, outcome = status.run_id, outcome_of(status, size)
    # A chunk the run streamed earlier stays; only the outcome must not appear.
    await client.xadd(keys.events(run_id), {"k": "c", "m": b"earlier chunk"})
    stale = digest(b"what the worker saw before someone else changed the record")

    assert not await records(client, settings).finish(stale, finished(status), outcome, owner=OWNER)

    entries = await client.xrange(keys.events(run_id))
    assert [fields[b"k"] for _, fields in entries] == [b"c"]
    stored = await client.get(keys.status(run_id))
    assert protocol.open_status(stored, run_id).state == "running"  # untouched
    assert await client.exists(keys.body(run_id)) == 1  # still there for a redelivery
    assert await client.exists(keys.lock(run_id)) == 0  # this worker is done either way


@pytest.mark.parametrize("size", SIZES.values(), ids=list(SIZES))
async def test_finish_after_the_status_expired_writes_no_status_back(
    client: aredis.Redis, settings: Settings, size: int
) -> None:
    # The final status is written by the same command that reads what it replaces: when
    # nothing was there (the record expired), the script must not leave its own behind.
    protocol = Protocol(settings)
    status = await running(client, protocol)
    run_id, outcome = status.run_id, outcome_of(status, size)
    expected = digest(protocol.seal_status(status))
    await client.delete(keys.status(run_id))

    assert not await records(client, settings).finish(
        expected, finished(status), outcome, owner=OWNER
    )

    assert await client.exists(keys.status(run_id), keys.lock(run_id)) == 0
    assert await client.xrange(keys.events(run_id)) == []  # no outcome appended


async def test_finish_on_a_changed_status_puts_it_back_with_a_bounded_ttl(
    client: aredis.Redis, settings: Settings
) -> None:
    protocol = Protocol(settings)
    status = await running(client, protocol)
    run_id, outcome = status.run_id, outcome_of(status, 100)
    other = protocol.seal_status(finished(status))  # another delivery finished the run
    await client.set(keys.status(run_id), other, ex=30)

    assert not await records(client, settings).finish(
        digest(protocol.seal_status(status)), finished(status), outcome, owner=OWNER
    )

    assert await client.get(keys.status(run_id)) == other
    assert 0 < await client.ttl(keys.status(run_id)) <= 600  # the records' own ttl at most


async def test_large_finish_against_a_forged_key_of_another_type_records_nothing(
    client: aredis.Redis, settings: Settings
) -> None:
    protocol = Protocol(settings)
    status = await running(client, protocol)
    run_id, outcome = status.run_id, outcome_of(status, SIZES["large"])
    await client.set(keys.events(run_id), b"a string where the stream belongs")
    expected = digest(protocol.seal_status(status))

    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await records(client, settings).finish(expected, finished(status), outcome, owner=OWNER)

    stored = await client.get(keys.status(run_id))
    assert protocol.open_status(stored, run_id).state == "running"  # not marked finished
