"""One stream reader per process (producer/reader.py): many waits at once share one XREAD and
one connection, each still gets exactly its own chunks, and a waiter that stops disturbs
nobody else."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from runnable_k8s import RunnableK8s, Settings
from runnable_k8s.producer.aclient import async_client_for
from runnable_k8s.producer.client import client_for
from runnable_k8s.producer.handles import RemoteRun
from tests.support.models import SlowModel
from tests.support.workers import WorkerProcess

WAITS = 150  # past the 100 connections of a redis-py pool: one connection per wait would fail
CHUNKS = 5
TEXT = "".join(f"part{i} " for i in range(CHUNKS))


def _connections(pool: Any) -> int:
    return len(pool._in_use_connections) + len(pool._available_connections)


@pytest.mark.timeout(240)
def test_150_concurrent_streams_in_one_process_finish_on_a_bounded_number_of_connections(
    settings: Settings, worker: WorkerProcess
) -> None:
    remote = RunnableK8s(bound=SlowModel(delay=0.05, chunks=CHUNKS), settings=settings)
    runs = [remote.submit(f"r{i}", stream=True) for i in range(WAITS)]

    async def all_at_once() -> tuple[list[str], int]:
        pool = async_client_for(settings)._redis.connection_pool
        most = 0

        async def follow(run: RemoteRun) -> str:
            return "".join([chunk.content async for chunk in run.astream(timeout=180)])

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, _connections(pool))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        followers = []
        for run in runs:
            # Started a moment apart: each first reads the run's status, one command that
            # holds a pool connection; the waits that follow hold none of their own.
            followers.append(asyncio.create_task(follow(run)))
            await asyncio.sleep(0.005)
        texts = await asyncio.gather(*followers)
        watcher.cancel()
        return texts, most

    texts, most = asyncio.run(all_at_once())
    assert texts == [TEXT] * WAITS
    # The reader's connection, and the few that status reads and wake-ups borrow for a
    # moment (more of them overlap on a loaded machine); one per wait would be 150 (and fail
    # at the pool's 100).
    assert most <= 25


@pytest.mark.timeout(240)
def test_threads_waiting_at_once_share_the_blocking_clients_reader(
    settings: Settings, worker: WorkerProcess
) -> None:
    remote = RunnableK8s(bound=SlowModel(delay=0.05, chunks=CHUNKS), settings=settings)
    runs = [remote.submit(f"t{i}", stream=True) for i in range(40)]
    texts: dict[int, str] = {}
    pool = client_for(settings)._redis.connection_pool
    before = _connections(pool)

    def follow(i: int) -> None:
        texts[i] = "".join(chunk.content for chunk in runs[i].stream(timeout=180))

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(len(runs))]
    for thread in threads:
        thread.start()
        time.sleep(0.01)  # as above: each first reads the run's status on a pool connection
    for thread in threads:
        thread.join(200)
    assert [texts.get(i) for i in range(len(runs))] == [TEXT] * len(runs)
    # As above: one per wait would be 40.
    assert _connections(pool) - before <= 15


@pytest.mark.timeout(240)
def test_a_waiter_that_stops_mid_stream_does_not_disturb_the_others(
    settings: Settings, worker: WorkerProcess
) -> None:
    remote = RunnableK8s(bound=SlowModel(delay=0.25, chunks=CHUNKS), settings=settings)

    async def scenario() -> tuple[list[str], list[Any], str]:
        begun = asyncio.Event()

        async def follow(i: int) -> str:
            parts = []
            async for chunk in remote.astream(f"s{i}"):
                parts.append(chunk.content)
                if i == 3:
                    begun.set()
            return "".join(parts)

        tasks = [asyncio.create_task(follow(i)) for i in range(10)]
        cancelled = tasks[3]
        # Mid-stream: its first chunk is in, four more are a second of model time away (a
        # fixed sleep instead let a loaded machine wake after the stream had ended).
        await asyncio.wait_for(begun.wait(), 60)
        cancelled.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        texts = [t for i, t in enumerate(done) if i != 3]
        # The reader serves a stream that starts after the cancellation.
        later = "".join([chunk.content async for chunk in remote.astream("later")])
        return texts, [done[3]], later

    texts, stopped, later = asyncio.run(scenario())
    assert texts == [TEXT] * 9
    assert isinstance(stopped[0], asyncio.CancelledError)
    assert later == TEXT


def _server_connections(settings: Settings) -> int:
    import redis

    with redis.Redis.from_url(settings.redis_url) as probe:
        return len(probe.client_list()) - 1  # less the probe itself


@pytest.mark.timeout(240)
def test_asyncio_run_again_and_again_does_not_leave_connections_open(
    settings: Settings, worker: WorkerProcess
) -> None:
    # A script or a sync web handler calls asyncio.run(remote.ainvoke(...)) once per request:
    # each run is a new event loop, and what a closed loop's client held must go with it.
    import gc

    remote = RunnableK8s(bound=SlowModel(delay=0.0, chunks=2), settings=settings)
    assert asyncio.run(remote.ainvoke("warm")).content == "echo: warm"
    gc.collect()
    before = _server_connections(settings)
    for i in range(30):
        assert asyncio.run(remote.ainvoke(f"a{i}")).content == f"echo: a{i}"
        streamed = asyncio.run(_joined(remote, f"s{i}"))
        assert streamed == "part0 part1 "
    gc.collect()
    # Two per loop left open would be 60 more; the worker's own and a moment's overlap are fine.
    assert _server_connections(settings) - before <= 5


async def _joined(remote: RunnableK8s, text: str) -> str:
    return "".join([chunk.content async for chunk in remote.astream(text)])


@pytest.mark.timeout(240)
def test_loops_closed_by_hand_leave_at_most_one_loops_connections(
    settings: Settings, worker: WorkerProcess
) -> None:
    # Without `shutdown_asyncgens` nothing can await on the loop any more; the next call, from
    # another loop, drops the closed loop's client and its connections go when collected.
    import gc

    remote = RunnableK8s(bound=SlowModel(delay=0.0, chunks=2), settings=settings)
    gc.collect()
    before = _server_connections(settings)
    for i in range(20):
        loop = asyncio.new_event_loop()
        try:
            assert loop.run_until_complete(remote.ainvoke(f"h{i}")).content == f"echo: h{i}"
        finally:
            loop.close()
        gc.collect()
    assert _server_connections(settings) - before <= 5


@pytest.mark.timeout(120)
def test_a_child_forked_while_the_reader_held_its_lock_still_waits_on_runs(
    settings: Settings, worker: WorkerProcess
) -> None:
    # gunicorn's --preload, multiprocessing's fork: the reader thread of the parent may hold
    # its lock at the moment of the fork; the child's copy of the lock would stay held for ever.

    remote = RunnableK8s(bound=SlowModel(delay=0.0, chunks=2), settings=settings)
    assert remote.invoke("parent").content == "echo: parent"  # the reader thread exists
    reader = client_for(settings)._reader
    code = _forked_child_exit_code(
        reader._lock,  # as the thread holds it while it files a reply
        lambda: remote.invoke("child").content == "echo: child",
        "the forked child hung on the reader's lock",
    )
    assert code == 0
    assert remote.invoke("parent again").content == "echo: parent again"


@pytest.mark.timeout(120)
def test_a_child_forked_while_another_threads_loop_held_the_client_table_still_awaits_runs(
    settings: Settings, worker: WorkerProcess
) -> None:
    # Loops of several threads share the table of asyncio clients behind one lock; a fork
    # while another thread holds it (looking its loop's client up, or its loop shutting down)
    # must not leave the child's copy held for ever.

    from runnable_k8s.producer import aclient

    remote = RunnableK8s(bound=SlowModel(delay=0.0, chunks=2), settings=settings)
    code = _forked_child_exit_code(
        aclient._async_clients_lock,  # as another thread's `async_client_for` holds it
        lambda: asyncio.run(remote.ainvoke("child")).content == "echo: child",
        "the forked child hung on the asyncio client table's lock",
    )
    assert code == 0
    assert asyncio.run(remote.ainvoke("parent")).content == "echo: parent"


@pytest.mark.timeout(240)
def test_a_generator_closed_at_loop_shutdown_may_still_call_the_client(
    settings: Settings, worker: WorkerProcess
) -> None:
    # asyncio.run closes every unfinished async generator at its end, the loop's client
    # closer among them; a caller's generator whose cleanup awaits us (here: cancel the run
    # it stopped following) may run after the closer did, and still gets an answer, without
    # a warning, and its connection does not outlive the next loop.
    import gc

    from runnable_k8s.protocol.messages import RunStatus

    remote = RunnableK8s(bound=SlowModel(delay=0.05, chunks=40), settings=settings)
    asyncio.run(remote.ainvoke("warm"))
    gc.collect()
    before = _server_connections(settings)
    cleanups: list[Any] = []

    async def follow(text: str) -> Any:
        run = remote.submit(text, stream=True)
        try:
            async for chunk in run.astream(timeout=60):
                yield chunk
        finally:
            try:
                cleanups.append(await run.acancel())
            except BaseException as exc:
                cleanups.append(exc)
                raise

    async def stop_following(text: str) -> Any:
        chunks = follow(text)
        await anext(chunks)
        return chunks  # left unfinished: asyncio.run closes it

    left = [asyncio.run(stop_following(f"left{i}")) for i in range(5)]
    assert [type(c) for c in cleanups] == [RunStatus] * 5, cleanups
    assert asyncio.run(remote.ainvoke("after")).content == "echo: after"
    del left
    gc.collect()
    assert _server_connections(settings) - before <= 5


def _forked_child_exit_code(lock: Any, child: Any, hung: str) -> int:
    """Fork while `lock` is held (as another thread would hold it), run `child()` in the child
    (True: exit 0, False: 2, raised: 1), and return its exit code; fail with `hung` if the
    child has not exited within 60 s."""
    import os
    import warnings

    with lock:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: forking with threads
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status only
            code = 1
            try:
                code = 0 if child() else 2
            finally:
                os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(hung)
