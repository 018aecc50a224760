"""Registered runnables: code that cannot travel (a RunnableLambda, a LangGraph graph) runs by
reference through every entry point."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.runnables import RunnableLambda

from runnable_k8s import (
    ExecutionTimeout,
    RemoteRun,
    RunCancelled,
    RunnableK8s,
    RunRejected,
    SerializationRefused,
    Settings,
)
from tests.conftest import make_settings
from tests.support.refs import graph as local_graph
from tests.support.refs import lambda_chain
from tests.support.workers import REPO, WorkerProcess, worker_env

PIKACHU = {"input": "What does Pikachu evolve from?"}
EXPECTED = lambda_chain.invoke(PIKACHU)


def test_shipping_what_cannot_travel_says_what_to_do(settings: Settings) -> None:
    with pytest.raises(SerializationRefused) as caught:
        RunnableK8s(bound=lambda_chain, settings=settings)
    message = str(caught.value)
    assert "RunnableLambda" in message
    assert "ref=" in message and "RUNNABLE_K8S_ALLOWED_REFS" in message


def test_every_entry_point_by_reference(settings: Settings, worker: WorkerProcess) -> None:
    remote = RunnableK8s(ref="tests.support.refs:lambda_chain", settings=settings)
    assert EXPECTED.startswith("PIKACHU EVOLVES FROM PICHU")
    assert remote.invoke(PIKACHU) == EXPECTED
    assert remote.batch([PIKACHU] * 3) == [EXPECTED] * 3
    assert "".join(remote.stream(PIKACHU)) == EXPECTED
    run = remote.submit(PIKACHU)
    assert RemoteRun.attach(run.id, settings).result(timeout=30) == EXPECTED


async def test_async_entry_points_by_reference(settings: Settings, worker: WorkerProcess) -> None:
    remote = RunnableK8s(ref="tests.support.refs:lambda_chain", settings=settings)
    assert await remote.ainvoke(PIKACHU) == EXPECTED
    assert await remote.abatch([PIKACHU] * 2) == [EXPECTED] * 2
    assert "".join([c async for c in remote.astream(PIKACHU)]) == EXPECTED
    run = await remote.asubmit(PIKACHU)
    assert await run.aresult(timeout=30) == EXPECTED


def test_cancel_timeouts_retries_and_config_by_reference(
    settings: Settings, worker: WorkerProcess
) -> None:
    slow = RunnableK8s(ref="tests.support.refs:slow", settings=settings)
    run = slow.submit(60)
    run.cancel()
    with pytest.raises(RunCancelled):
        run.result(timeout=30)
    limited = RunnableK8s(ref="tests.support.refs:slow", settings=settings, time_limit=0.3)
    with pytest.raises(ExecutionTimeout):
        limited.invoke(30)
    flaky = RunnableK8s(ref="tests.support.refs:flaky", settings=settings)
    run = flaky.submit("ok")
    assert run.result(timeout=30) == "ok after retries"
    assert run.status().attempt == 3
    probe = RunnableK8s(ref="tests.support.refs:probe", settings=settings)
    seen = probe.invoke("x", config={"tags": ["t1"], "configurable": {"user": "u"}})
    assert "t1" in seen["tags"] and seen["configurable"] == {"user": "u"}


def test_references_outside_the_allowlist_are_refused(
    settings: Settings, worker: WorkerProcess
) -> None:
    for ref in ("os:system", "tests.support.models:ConfigProbe", "not a ref"):
        with pytest.raises(RunRejected, match=r"RUNNABLE_K8S_ALLOWED_REFS|not a reference"):
            RunnableK8s(ref=ref, settings=settings).invoke("x")
    with pytest.raises(SerializationRefused, match="base_url"):
        RunnableK8s(ref="tests.support.refs:probe", settings=settings).invoke(
            "x", base_url="http://elsewhere"
        )
    assert (
        RunnableK8s(ref="tests.support.refs:probe", settings=settings).invoke("y")["input"] == "y"
    )


def test_cli_runs_what_cannot_travel_by_reference(
    settings: Settings, worker: WorkerProcess
) -> None:
    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "runnable_k8s", *args],
            env=worker_env(settings),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    run_id = cli("submit", "tests.support.refs:lambda_chain", "--input", json.dumps(PIKACHU))
    assert json.loads(cli("result", run_id)) == EXPECTED
    run_id = cli(
        "submit",
        "tests.support.refs:graph",
        "--ref",
        "--input",
        json.dumps({"messages": [{"role": "user", "content": "Eevee?"}]}),
    )
    state = json.loads(cli("result", run_id))
    assert "Eevee" in state["messages"][-1]["kwargs"]["content"]


def test_langgraph_graph_stream_modes(settings: Settings, worker: WorkerProcess) -> None:
    graph = RunnableK8s(ref="tests.support.refs:graph", settings=settings)
    state = {"messages": [HumanMessage("What does Pikachu evolve from?")]}
    final = graph.invoke(state)
    assert [m.type for m in final["messages"]] == ["human", "ai"]
    assert "Pichu" in final["messages"][-1].content

    # The same stream as running the graph here (message ids differ, shapes do not).
    values = list(graph.stream(state, stream_mode="values"))

    async def local() -> list[dict[str, Any]]:
        return [v async for v in local_graph.astream(state, stream_mode="values")]

    local_values = asyncio.run(local())
    assert [len(v["messages"]) for v in values] == [len(v["messages"]) for v in local_values]
    assert [m.content for m in values[-1]["messages"]] == [m.content for m in final["messages"]]

    updates = list(graph.stream(state, stream_mode="updates"))
    assert [next(iter(u)) for u in updates] == ["model", "done"]
    assert updates[0]["model"]["messages"][0].content == final["messages"][-1].content

    tokens = list(graph.stream(state, stream_mode="messages"))
    chunks = [token for token, _meta in tokens]
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(str(c.content) for c in chunks) == final["messages"][-1].content
    assert {meta["langgraph_node"] for _t, meta in tokens} == {"model"}


@pytest.fixture(scope="module")
def two_workers(
    redis_url: str, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, Settings]]:
    """Two workers on two queues sharing one checkpointer database."""
    db = tmp_path_factory.mktemp("graph") / "checkpoints.sqlite"
    first = make_settings(redis_url)
    second = first.replace(queue=first.queue + "-b")
    workers = [
        WorkerProcess(s, logs_dir, name=f"graph{i}", env={"RK8S_TEST_GRAPH_DB": str(db)})
        for i, s in enumerate((first, second))
    ]
    for worker in workers:
        worker.wait_ready()
    yield first, second
    for worker in workers:
        worker.stop()


def test_thread_continues_on_another_worker(two_workers: tuple[Settings, Settings]) -> None:
    first, second = two_workers
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    on_a = RunnableK8s(ref="tests.support.refs:make_chat_graph", settings=first)
    on_b = RunnableK8s(ref="tests.support.refs:make_chat_graph", settings=second)
    state = on_a.invoke({"messages": [HumanMessage("Pikachu?")]}, config=config)
    assert len(state["messages"]) == 2
    # The next turn runs on the other worker, which finds the thread in the shared store.
    state = on_b.invoke({"messages": [HumanMessage("Eevee?")]}, config=config)
    assert [m.content for m in state["messages"] if m.type == "human"] == ["Pikachu?", "Eevee?"]
    assert "Eevee" in state["messages"][-1].content
    other = on_b.invoke(
        {"messages": [HumanMessage("Bulbasaur?")]},
        config={"configurable": {"thread_id": uuid.uuid4().hex}},
    )
    assert len(other["messages"]) == 2


def test_refs_are_not_imported_by_the_producer(settings: Settings) -> None:
    # The producer never imports a reference: a module that does not exist here is fine until
    # a worker refuses it.
    remote = RunnableK8s(ref="only_in_the_worker_image.graphs:agent", settings=settings)
    assert remote.name == "only_in_the_worker_image.graphs:agent"
    assert "only_in_the_worker_image" not in sys.modules
    with pytest.raises(SerializationRefused):
        RunnableK8s(bound=RunnableLambda(lambda x: x), settings=settings)
