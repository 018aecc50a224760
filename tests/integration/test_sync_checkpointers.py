"""Graphs compiled with LangGraph's sync checkpointers (`SqliteSaver`, `PostgresSaver`) run on
real workers by reference: state carries over on a thread, streams work, the time limit and
cancellation still end a run, and workers sharing one PostgreSQL store share its threads.

Each check also reads the store directly from this process, so a count is the store's, not
only what a worker reported."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver

from runnable_k8s import ExecutionTimeout, RunCancelled, RunnableK8s, Settings
from tests.conftest import make_settings
from tests.support.checkpointed import build_counter
from tests.support.workers import WorkerProcess

REFS = ("tests.support.checkpointed:",)
SQLITE_REF = "tests.support.checkpointed:sqlite_counter"
POSTGRES_REF = "tests.support.checkpointed:postgres_counter"

# How many the store holds for a thread (None: the thread has no checkpoint).
StoredCount = Callable[[str], "int | None"]


def _thread(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


def _count_in(saver: SqliteSaver | PostgresSaver, thread_id: str) -> int | None:
    stored = saver.get_tuple(_thread(thread_id))
    return None if stored is None else stored.checkpoint["channel_values"].get("count")


@pytest.fixture(scope="module")
def sqlite_store(
    redis_url: str, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, StoredCount]]:
    """A worker whose graph keeps its checkpoints with SqliteSaver in a file here."""
    db = tmp_path_factory.mktemp("sqlite-saver") / "checkpoints.sqlite"
    settings = make_settings(redis_url, allowed_refs=REFS)
    worker = WorkerProcess(
        settings, logs_dir, name="sqlite-saver", env={"RK8S_TEST_SQLITE_DB": str(db)}
    )
    worker.wait_ready()
    conn = sqlite3.connect(db, check_same_thread=False)
    try:
        yield settings, lambda thread_id: _count_in(SqliteSaver(conn), thread_id)
    finally:
        conn.close()
        worker.stop()


@pytest.fixture(scope="module")
def postgres_store(
    redis_url: str, logs_dir: Path, postgres_url: str
) -> Iterator[tuple[Settings, Settings, StoredCount]]:
    """Two workers on two queues whose graphs keep checkpoints in one PostgreSQL database."""
    with PostgresSaver.from_conn_string(postgres_url) as saver:
        saver.setup()  # once, before the workers start (see the README)
        first = make_settings(redis_url, allowed_refs=REFS)
        second = first.replace(queue=first.queue + "-b")
        env = {"RK8S_TEST_POSTGRES_URL": postgres_url}
        workers = [
            WorkerProcess(s, logs_dir, name=f"postgres-saver{i}", env=env)
            for i, s in enumerate((first, second))
        ]
        try:
            for worker in workers:
                worker.wait_ready()
            yield first, second, lambda thread_id: _count_in(saver, thread_id)
        finally:
            for worker in workers:
                worker.stop()


@dataclass
class Store:
    """The counter graph by reference on one worker, and the store its saver writes."""

    ref: str
    settings: Settings
    stored: StoredCount

    def remote(self, **options: Any) -> RunnableK8s:
        return RunnableK8s(ref=self.ref, settings=self.settings, **options)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "sqlite":
        settings, stored = request.getfixturevalue("sqlite_store")
        return Store(SQLITE_REF, settings, stored)
    settings, _other, stored = request.getfixturevalue("postgres_store")
    return Store(POSTGRES_REF, settings, stored)


def test_sync_saver_graph_carries_state_between_runs_on_a_thread(
    store: Store,
) -> None:
    remote, stored = store.remote(), store.stored
    thread_id = uuid.uuid4().hex
    config = _thread(thread_id)
    assert remote.invoke({}, config=config) == {"count": 1, "nodes": ["increment", "nap"]}
    second = remote.invoke({}, config=config)
    assert second["count"] == 2
    assert second["nodes"] == ["increment", "nap"] * 2
    assert stored(thread_id) == 2
    # Another thread has its own state.
    assert remote.invoke({}, config=_thread(uuid.uuid4().hex))["count"] == 1
    assert stored(thread_id) == 2
    # A batch runs each input on its own thread.
    configs = [_thread(thread_id), _thread(uuid.uuid4().hex)]
    assert [out["count"] for out in remote.batch([{}, {}], config=configs)] == [3, 1]
    assert stored(thread_id) == 3


def test_sync_saver_graph_streams_on_a_thread_as_in_process(store: Store) -> None:
    remote, stored = store.remote(), store.stored
    config = _thread(uuid.uuid4().hex)
    local = build_counter(InMemorySaver())  # the same graph, run here

    def here(value: dict[str, Any], mode: str) -> list[Any]:
        async def run() -> list[Any]:
            return [c async for c in local.astream(value, config, stream_mode=mode)]

        return asyncio.run(run())

    remote.invoke({}, config=config)
    here({}, "values")
    updates = list(remote.stream({}, config=config, stream_mode="updates"))
    assert updates == [
        {"increment": {"count": 2, "nodes": ["increment"]}},
        {"nap": {"nodes": ["nap"]}},
    ]
    assert updates == here({}, "updates")
    values = list(remote.stream({"nap": 0}, config=config, stream_mode="values"))
    assert values == here({"nap": 0}, "values")
    assert [v["count"] for v in values] == [2, 3, 3]  # the input, then each node
    assert stored(config["configurable"]["thread_id"]) == 3


async def test_sync_saver_graph_async_entry_points(store: Store) -> None:
    remote, stored = store.remote(), store.stored
    thread_id = uuid.uuid4().hex
    config = _thread(thread_id)
    assert (await remote.ainvoke({}, config=config))["count"] == 1
    chunks = [c async for c in remote.astream({}, config=config, stream_mode="updates")]
    assert [next(iter(c)) for c in chunks] == ["increment", "nap"]
    assert stored(thread_id) == 2


def _wait_for_count(stored: StoredCount, thread_id: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while stored(thread_id) != count:
        assert time.monotonic() < deadline, f"thread {thread_id} never reached count={count}"
        time.sleep(0.05)


def test_time_limit_and_cancel_end_a_sync_saver_graph_mid_run(
    store: Store,
) -> None:
    remote, stored = store.remote(), store.stored
    limited = store.remote(time_limit=1.0)
    thread_id = uuid.uuid4().hex
    with pytest.raises(ExecutionTimeout):
        limited.invoke({"nap": 60}, config=_thread(thread_id))
    # The step before the nap was checkpointed; the thread goes on from there.
    assert stored(thread_id) == 1
    assert remote.invoke({"nap": 0}, config=_thread(thread_id))["count"] == 2

    other = uuid.uuid4().hex
    run = remote.submit({"nap": 60}, config=_thread(other))
    _wait_for_count(stored, other, 1)  # running: in its nap, after a checkpoint
    run.cancel()
    with pytest.raises(RunCancelled):
        run.result(timeout=30)
    assert remote.invoke({"nap": 0}, config=_thread(other))["count"] == 2


def test_workers_sharing_a_postgres_store_continue_each_others_threads(
    postgres_store: tuple[Settings, Settings, StoredCount],
) -> None:
    first, second, stored = postgres_store
    on_a = RunnableK8s(ref=POSTGRES_REF, settings=first)
    on_b = RunnableK8s(ref=POSTGRES_REF, settings=second)
    threads = [uuid.uuid4().hex for _ in range(3)]
    for turn in range(1, 5):
        worker = on_a if turn % 2 else on_b
        for thread_id in threads:
            assert worker.invoke({}, config=_thread(thread_id))["count"] == turn
    assert [stored(t) for t in threads] == [4, 4, 4]
    # And a stream on one worker continues what the other wrote.
    updates = list(on_b.stream({}, config=_thread(threads[0]), stream_mode="updates"))
    assert updates[0] == {"increment": {"count": 5, "nodes": ["increment"]}}
    assert on_a.invoke({}, config=_thread(threads[0]))["count"] == 6
