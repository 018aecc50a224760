"""A compiled graph's state API by reference: `get_state`, `get_state_history`, `update_state`
(sync and async) on `RunnableK8s(ref=graph)` run on a real worker, where the checkpointer lives,
and return what the compiled graph returns.

Two comparisons: with the same graph compiled here on the worker's own store (the same SQLite
file), snapshots must be equal field for field; with the same graph run in-process on a store
of its own, the same calls must have the same effect (ids and times aside)."""

from __future__ import annotations

import asyncio
import datetime
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.prompts import ChatPromptTemplate
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.errors import InvalidUpdateError
from langgraph.types import Command, GraphOutput, StateSnapshot

from runnable_k8s import (
    ConfigurationError,
    RemoteError,
    RunnableK8s,
    RunRejected,
    SerializationRefused,
    Settings,
)
from tests.conftest import make_settings
from tests.support.hitl import Graph, build_approval, build_nested
from tests.support.workers import REPO, WorkerProcess, worker_env

REFS = (
    "tests.support.hitl:",
    "tests.support.checkpointed:",
    "tests.support.refs:graph",
    "tests.support.refs:slow",
)
APPROVAL = "tests.support.hitl:approval"


@dataclass
class Store:
    settings: Settings
    conn: sqlite3.Connection

    def remote(self, ref: str = APPROVAL) -> RunnableK8s[Any, Any]:
        return RunnableK8s(ref=ref, settings=self.settings)

    def here(self) -> Graph:
        """The same graph compiled in this process on the worker's store."""
        return build_approval(SqliteSaver(self.conn))


@pytest.fixture(scope="module")
def store(
    redis_url: str, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    db = tmp_path_factory.mktemp("graph-state") / "checkpoints.sqlite"
    settings = make_settings(redis_url, allowed_refs=REFS)
    worker = WorkerProcess(
        settings, logs_dir, name="graph-state", env={"RK8S_TEST_SQLITE_DB": str(db)}
    )
    worker.wait_ready()
    conn = sqlite3.connect(db, check_same_thread=False)
    try:
        yield Store(settings, conn)
    finally:
        conn.close()
        worker.stop()


def _thread() -> dict[str, Any]:
    return {"configurable": {"thread_id": uuid.uuid4().hex}}


def _effect(snapshot: StateSnapshot) -> tuple[Any, ...]:
    """What two runs of one graph on two stores share: values, next nodes, interrupt values,
    checkpoint source and step, and the tasks' names."""
    return (
        snapshot.values,
        snapshot.next,
        [i.value for i in snapshot.interrupts],
        {k: snapshot.metadata.get(k) for k in ("source", "step")} if snapshot.metadata else None,
        [(t.name, [i.value for i in t.interrupts]) for t in snapshot.tasks],
    )


def test_get_state_returns_the_compiled_graphs_state_snapshot(store: Store) -> None:
    remote, config = store.remote(), _thread()
    local, local_config = build_approval(InMemorySaver()), _thread()
    remote.invoke({"draft": "hi"}, config)
    local.invoke({"draft": "hi"}, local_config)

    snapshot = remote.get_state(config)

    assert type(snapshot) is StateSnapshot  # LangGraph's class, not a stand-in
    assert snapshot == store.here().get_state(config)
    assert snapshot.next == ("approve",)
    assert type(snapshot.tasks[0].interrupts) is tuple
    assert _effect(snapshot) == _effect(local.get_state(local_config))
    assert asyncio.run(remote.aget_state(config)) == snapshot
    assert remote.get_state(config, subgraphs=True) == store.here().get_state(
        config, subgraphs=True
    )


def test_get_state_with_subgraphs_carries_the_subgraphs_snapshot(store: Store) -> None:
    remote = store.remote("tests.support.hitl:nested")
    config, local_config = _thread(), _thread()
    local = build_nested(InMemorySaver())
    remote.invoke({"draft": "n"}, config)
    local.invoke({"draft": "n"}, local_config)

    snapshot = remote.get_state(config, subgraphs=True)

    assert snapshot == build_nested(SqliteSaver(store.conn)).get_state(config, subgraphs=True)
    (task,) = snapshot.tasks
    assert type(task.state) is StateSnapshot and task.state.next == ("approve",)
    expected = local.get_state(local_config, subgraphs=True)
    assert _effect(task.state) == _effect(expected.tasks[0].state)
    # Without subgraphs=True the task holds the config to ask the subgraph by, as in-process.
    plain = remote.get_state(config)
    assert isinstance(plain.tasks[0].state, dict)
    assert remote.get_state(plain.tasks[0].state) == task.state


def test_get_state_does_not_wait_for_the_threads_active_run(store: Store) -> None:
    # Runs on a thread take turns; a state read is not a run of the graph and, as in-process,
    # reads the thread's last checkpoint while a run is going.
    counter = store.remote("tests.support.checkpointed:sqlite_counter")
    config = _thread()
    counter.invoke({"nap": 0}, config)
    running = counter.submit({"nap": 60}, config)
    deadline = time.monotonic() + 60
    while running.status().state != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        snapshot = counter.get_state(config)
        assert running.status().state == "running"
        assert snapshot.values["count"] >= 1
    finally:
        running.cancel()


def test_get_state_of_a_thread_never_seen_is_the_empty_snapshot(store: Store) -> None:
    config = _thread()
    assert store.remote().get_state(config) == store.here().get_state(config)
    assert store.remote().get_state(config).values == {}


def test_get_state_history_lists_the_threads_checkpoints_newest_first(store: Store) -> None:
    remote, config = store.remote(), _thread()
    remote.invoke({"draft": "h"}, config)
    remote.invoke(Command(resume="yes"), config)
    here = store.here()

    history = list(remote.get_state_history(config))

    assert history == list(here.get_state_history(config))
    assert len(history) >= 4
    assert [s.created_at for s in history] == sorted((s.created_at for s in history), reverse=True)
    limited = list(remote.get_state_history(config, limit=2))
    assert limited == history[:2]
    before = history[1].config
    assert list(remote.get_state_history(config, before=before)) == list(
        here.get_state_history(config, before=before)
    )
    loops = {"source": "loop"}
    assert list(remote.get_state_history(config, filter=loops)) == list(
        here.get_state_history(config, filter=loops)
    )

    async def collect() -> list[StateSnapshot]:
        return [s async for s in remote.aget_state_history(config, limit=3)]

    assert asyncio.run(collect()) == history[:3]
    # Time travel: a past checkpoint by its config, as a history view would open it.
    past = history[2].config
    assert remote.get_state(past) == here.get_state(past) == history[2]


def test_update_state_as_a_node_then_continue_as_in_process(store: Store) -> None:
    remote, config = store.remote(), _thread()
    local, local_config = build_approval(InMemorySaver()), _thread()
    remote.invoke({"draft": "first"}, config)
    local.invoke({"draft": "first"}, local_config)

    # An approval screen: answer on the node's behalf instead of resuming it.
    values = {"draft": "edited", "answers": ["approved by hand"]}
    written = remote.update_state(config, values, as_node="approve")
    local_written = local.update_state(local_config, values, as_node="approve")

    assert written == store.here().get_state(config).config
    assert set(written["configurable"]) == set(local_written["configurable"])
    assert _effect(remote.get_state(config)) == _effect(local.get_state(local_config))
    assert remote.get_state(config).next == ("publish",)
    assert remote.invoke(None, config) == local.invoke(None, local_config)
    # Async, without as_node: LangGraph picks the node that wrote last, as in-process.
    asyncio.run(remote.aupdate_state(config, {"log": ["noted"]}))
    local.update_state(local_config, {"log": ["noted"]})
    assert _effect(remote.get_state(config)) == _effect(local.get_state(local_config))


def test_invoke_version_2_returns_graph_output_with_its_interrupts(store: Store) -> None:
    local, local_config = build_approval(InMemorySaver()), _thread()

    output = store.remote().invoke({"draft": "again"}, _thread(), version="v2")
    expected = local.invoke({"draft": "again"}, local_config, version="v2")

    assert type(output) is GraphOutput
    assert output.value == expected.value
    assert [i.value for i in output.interrupts] == [i.value for i in expected.interrupts]


def test_update_state_with_an_unknown_node_raises_langgraphs_error(store: Store) -> None:
    config, local_config = _thread(), _thread()
    store.remote().invoke({}, config)
    local = build_approval(InMemorySaver())
    local.invoke({}, local_config)
    with pytest.raises(InvalidUpdateError) as in_process:
        local.update_state(local_config, {"draft": "x"}, as_node="nope")

    with pytest.raises(RemoteError) as remote:
        store.remote().update_state(config, {"draft": "x"}, as_node="nope")

    assert remote.value.remote_type.endswith("InvalidUpdateError")
    assert remote.value.remote_message == str(in_process.value)


def test_state_calls_refuse_what_cannot_travel_or_is_not_a_graph(store: Store) -> None:
    config = _thread()
    when = datetime.datetime(2026, 1, 1)
    with pytest.raises(SerializationRefused, match=r"input contains \S+ at draft, "):
        store.remote().update_state(config, {"draft": when}, as_node="write")
    with pytest.raises(SerializationRefused, match="filter= must be a dict of JSON values"):
        list(store.remote().get_state_history(config, filter={"at": when}))
    with pytest.raises(ConfigurationError, match=r"thread_id'\] must be a string"):
        store.remote().get_state({"configurable": {"thread_id": 7}})
    shipped = RunnableK8s(bound=ChatPromptTemplate.from_template("{x}"), settings=store.settings)
    with pytest.raises(ConfigurationError, match=r"needs RunnableK8s\(ref="):
        shipped.get_state(config)
    # A reference the worker does not allow: refused there, as any run of it would be.
    with pytest.raises(RunRejected, match=r"not in this worker's RUNNABLE_K8S_ALLOWED_REFS"):
        store.remote("tests.support.refs:lambda_chain").get_state(config)
    with pytest.raises(RemoteError, match="not a compiled LangGraph graph"):
        store.remote("tests.support.refs:slow").get_state(config)
    # A graph compiled without a checkpointer: LangGraph's own error, as in-process.
    with pytest.raises(RemoteError, match="No checkpointer set"):
        store.remote("tests.support.refs:graph").get_state(config)


_WITHOUT_LANGGRAPH = """
import json, sys
sys.modules["langgraph"] = None  # as if LangGraph were not installed on this caller
from runnable_k8s import RunnableK8s, Settings
graph = RunnableK8s(ref=sys.argv[1], settings=Settings.from_env())
config = {"configurable": {"thread_id": sys.argv[2]}}
state = graph.get_state(config)
(pending,) = state.interrupts
print(json.dumps({
    "snapshot": type(state).__module__ + "." + type(state).__name__,
    "task": type(state.tasks[0]).__module__ + "." + type(state.tasks[0]).__name__,
    "interrupt": type(pending).__module__ + "." + type(pending).__name__,
    "fields": list(state._fields), "next": list(state.next), "value": pending.value,
    "id": pending.id, "history": len(list(graph.get_state_history(config))),
}))
"""


def test_a_caller_without_langgraph_gets_stand_ins_with_the_same_fields(store: Store) -> None:
    config = _thread()
    store.remote().invoke({"draft": "plain"}, config)
    expected = store.here().get_state(config)
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_LANGGRAPH, APPROVAL, config["configurable"]["thread_id"]],
        env=worker_env(store.settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,  # the assertion shows stderr
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown == {
        "snapshot": "runnable_k8s.protocol.graph_state.StateSnapshot",
        "task": "runnable_k8s.protocol.graph_state.PregelTask",
        "interrupt": "runnable_k8s.protocol.interrupts.Interrupt",
        "fields": list(StateSnapshot._fields),
        "next": ["approve"],
        "value": expected.interrupts[0].value,
        "id": expected.interrupts[0].id,
        "history": len(list(store.here().get_state_history(config))),
    }
