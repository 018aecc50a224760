"""One `sentinel://` URL serves every client: the asyncio producer, the CLI and a worker; after
a failover an asyncio caller blocked on a result keeps waiting and gets it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from runnable_k8s import RunnableK8s
from tests.conftest import make_settings
from tests.support.models import SlowModel
from tests.support.sentinel import SentinelGroup
from tests.support.workers import WorkerProcess, cli


@pytest.mark.timeout(240)
async def test_async_callers_and_the_cli_use_the_sentinels_and_wait_through_a_failover(
    sentinel_group: SentinelGroup, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    settings = make_settings(sentinel_group.url, replica_acks=1, failover_wait=60.0, time_limit=6.0)
    env = {"RUNNABLE_K8S_REPLICA_ACKS": "1", "RUNNABLE_K8S_VISIBILITY_TIMEOUT": "8"}
    worker = WorkerProcess(settings, logs_dir, concurrency=4, env=env, name="clients")
    workers.append(worker)
    worker.wait_ready(60)
    remote = RunnableK8s(bound=SlowModel(delay=0.05), settings=settings)
    assert (await remote.ainvoke("a")).content == "echo: a"
    assert [c.content async for c in remote.astream("b")] == ["part0 ", "part1 ", "part2 ", ""]
    run = await asyncio.to_thread(remote.submit, "c")
    status = json.loads(cli(settings, "status", run.id, "--json").stdout)
    assert status["id"] == run.id
    # A slow run in flight while the master dies: its caller, already waiting, gets the result.
    slow = RunnableK8s(bound=SlowModel(delay=4.0), settings=settings)
    waiting = asyncio.ensure_future(slow.ainvoke("through"))
    await asyncio.sleep(1.0)
    old = sentinel_group.master()
    old.kill()
    result = await asyncio.wait_for(waiting, 120)
    assert result.content == "echo: through"
    assert sentinel_group.master() is not old
    assert worker.process.poll() is None


@pytest.mark.timeout(120)
def test_an_event_loops_client_closes_its_sentinel_connections_with_it(
    sentinel_group: SentinelGroup,
) -> None:
    # redis-py's `aclose` closes the master's pool, not the manager's clients of the sentinels:
    # a loop's client closed with its loop must close those too, or every `asyncio.run`
    # leaves a connection to each sentinel it asked, for the garbage collector to find open.
    import gc
    import warnings

    from runnable_k8s.errors import RunNotFound
    from runnable_k8s.producer.aclient import async_client_for

    settings = make_settings(sentinel_group.url)

    async def ask() -> None:
        with pytest.raises(RunNotFound):
            await async_client_for(settings).status("no-such-run")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            asyncio.run(ask())
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []


@pytest.mark.timeout(120)
def test_a_workers_broker_connection_keeps_its_transport_through_a_failover_switch(
    sentinel_group: SentinelGroup,
) -> None:
    # kombu takes every sentinel's URL as a failover URL, and its switch to the next one took
    # the transport from the URL's scheme: after a failover the worker ran on kombu's stock
    # transport, which never handed back the runs the failover cut (they carry their delivery
    # time in the `unacked` hash, which only ours reads).
    from runnable_k8s.worker.app import celery_app
    from runnable_k8s.worker.transport import SentinelChannel, SentinelTransport

    app = celery_app(make_settings(sentinel_group.url))
    with app.connection_for_read() as connection:
        addresses = set()
        for _ in range(len(sentinel_group.sentinels) + 1):  # every sentinel, then round again
            connection.maybe_switch_next()
            addresses.add(connection.port)
            assert connection.get_transport_cls() is SentinelTransport
            channel = connection.default_channel
            assert isinstance(channel, SentinelChannel)
            assert channel.client.ping()  # the master, found through the sentinels
        assert len(addresses) == len(sentinel_group.sentinels)
