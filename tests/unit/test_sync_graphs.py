"""A graph compiled with a sync-only checkpointer, loaded by reference, runs on an event loop;
its checkpoint calls leave the loop. Graphs that need nothing are returned as they are."""

from __future__ import annotations

import logging
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from runnable_k8s.worker.registry import Registry
from runnable_k8s.worker.sync_graphs import with_async_checkpointer
from tests.support.checkpointed import build_counter
from tests.support.postgres import find_bindir, unavailable


class RecordingSaver(SqliteSaver):
    """SqliteSaver that notes which thread each checkpoint write ran in."""

    threads: list[str]

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        self.threads.append(threading.current_thread().name)
        return super().put(config, checkpoint, metadata, new_versions)


def _saver(path: Path) -> RecordingSaver:
    saver = RecordingSaver(sqlite3.connect(path, check_same_thread=False))
    saver.threads = []
    saver.setup()
    return saver


async def test_reference_to_a_sync_saver_graph_loads_as_a_graph_that_runs_async(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RK8S_TEST_SQLITE_DB", str(tmp_path / "checkpoints.sqlite"))
    graph = await Registry(("tests.support.checkpointed:",)).load(
        "tests.support.checkpointed:sqlite_counter"
    )
    config: RunnableConfig = {"configurable": {"thread_id": "t1"}}
    assert (await graph.ainvoke({}, config))["count"] == 1
    assert (await graph.ainvoke({}, config))["count"] == 2
    chunks = [c async for c in graph.astream({}, config, stream_mode="updates")]
    assert chunks[0] == {"increment": {"count": 3, "nodes": ["increment"]}}
    # The state API reads through the same saver: history newest first, one per step.
    state = await graph.aget_state(config)  # type: ignore[attr-defined]
    assert state.values["count"] == 3
    history = [s async for s in graph.aget_state_history(config)]  # type: ignore[attr-defined]
    assert [s.values.get("count") for s in history[:3]] == [3, 3, 2]


async def test_checkpoint_calls_of_a_sync_saver_run_off_the_event_loop(tmp_path: Path) -> None:
    saver = _saver(tmp_path / "checkpoints.sqlite")
    graph = await with_async_checkpointer(build_counter(saver), "test:graph")
    await graph.ainvoke({}, {"configurable": {"thread_id": "t1"}})
    loop_thread = threading.current_thread().name
    assert saver.threads, "no checkpoint was written"
    assert loop_thread not in saver.threads
    assert all(name.startswith("rk8s-checkpointer") for name in saver.threads)


async def test_adapting_leaves_the_loaded_graph_itself_unchanged(tmp_path: Path) -> None:
    saver = _saver(tmp_path / "checkpoints.sqlite")
    original = build_counter(saver)
    adapted = await with_async_checkpointer(original, "test:graph")
    assert adapted is not original
    assert original.checkpointer is saver
    config: RunnableConfig = {"configurable": {"thread_id": "t1"}}
    await adapted.ainvoke({}, config)
    # Both see one store: the adapted graph wrote what the original reads.
    assert original.get_state(config).values["count"] == 1
    assert await with_async_checkpointer(adapted, "test:graph") is adapted


async def test_graphs_that_support_async_are_returned_as_they_are(tmp_path: Path) -> None:
    plain = RunnableLambda(lambda x: x)
    in_memory = build_counter(InMemorySaver())
    without = build_counter(None)  # type: ignore[arg-type]
    async with aiosqlite.connect(tmp_path / "async.sqlite") as conn:
        async_saver = AsyncSqliteSaver(conn)
        await async_saver.setup()
        async_graph = build_counter(async_saver)
        runnables: list[Any] = [plain, in_memory, without, async_graph]
        for runnable in runnables:
            assert await with_async_checkpointer(runnable, "test:graph") is runnable


def test_postgres_tests_skip_locally_and_fail_under_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="initdb missing"):
        unavailable("initdb missing")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="initdb missing"):
        unavailable("initdb missing")


def test_postgres_binaries_are_found_only_where_both_are_executable(tmp_path: Path) -> None:
    def place(name: str, *, executable: bool) -> None:
        binary = tmp_path / name
        binary.write_text("#!/bin/sh\n")
        mode = binary.stat().st_mode
        binary.chmod(mode | stat.S_IXUSR if executable else mode & ~stat.S_IXUSR)

    search = [str(tmp_path / "missing"), str(tmp_path)]
    assert find_bindir(search) is None
    place("initdb", executable=True)
    assert find_bindir(search) is None  # no pg_ctl
    place("pg_ctl", executable=False)
    assert find_bindir(search) is None  # pg_ctl cannot run
    place("pg_ctl", executable=True)
    assert find_bindir(search) == tmp_path


async def test_a_graph_with_an_in_memory_saver_loads_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    graph = build_counter(InMemorySaver())
    with caplog.at_level(logging.WARNING, logger="runnable_k8s.worker"):
        assert await with_async_checkpointer(graph, "myapp.graphs:agent") is graph
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "myapp.graphs:agent" in warned[0] and "InMemorySaver" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="runnable_k8s.worker"):
        await with_async_checkpointer(build_counter(None), "myapp.graphs:other")  # type: ignore[arg-type]
    assert not caplog.records
