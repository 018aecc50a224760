"""A streamed LangGraph run: its chunks are what in-process `astream` yields for the same stream
mode, and its result is what in-process `invoke` returns (the final state), never the last
update."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage

from runnable_k8s import RemoteRun, RunnableK8s, Settings
from runnable_k8s.producer.client import client_for, new_run_id
from runnable_k8s.protocol.codec import data_codec
from runnable_k8s.protocol.messages import RunRequest
from tests.support.refs import graph as local_graph
from tests.support.workers import REPO, WorkerProcess, worker_env

GRAPH = "tests.support.refs:graph"
QUESTION = "What does Pikachu evolve from?"


def state() -> dict[str, Any]:
    return {"messages": [HumanMessage(QUESTION)]}


def shape(value: Any) -> Any:
    """A value with what differs between two runs of the same graph left out: message ids
    (and run metadata: ids of tasks and checkpoints). Tuples become lists, as over JSON."""
    if isinstance(value, BaseMessage):
        return (value.type, value.content)
    if isinstance(value, dict):
        if "langgraph_node" in value:  # a "messages" chunk's metadata
            return {"node": value["langgraph_node"], "step": value["langgraph_step"]}
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [shape(v) for v in value]
    return value


def local_stream(**kwargs: Any) -> list[Any]:
    # The test graph is async-only (an async node): `astream` is its `stream`.
    async def collect() -> list[Any]:
        return [c async for c in local_graph.astream(state(), **kwargs)]

    return asyncio.run(collect())


def local_invoke() -> Any:
    return asyncio.run(local_graph.ainvoke(state()))


def test_streamed_graph_run_result_is_the_final_state(
    settings: Settings, worker: WorkerProcess
) -> None:
    remote = RunnableK8s(ref=GRAPH, settings=settings)
    run = remote.submit(state(), stream=True)
    chunks = list(run.stream(timeout=30))
    expected = local_invoke()
    assert shape(run.result(timeout=30)) == shape(expected)
    assert [m.type for m in expected["messages"]] == ["human", "ai"]
    # The graph's own default stream mode ("updates"), exactly as in-process.
    assert shape(chunks) == shape(local_stream())
    assert [next(iter(c)) for c in chunks] == ["model", "done"]


@pytest.mark.parametrize(
    "mode",
    ["updates", "values", "messages", ["updates", "values"], ["messages", "custom"]],
)
def test_graph_stream_modes_stream_what_astream_yields(
    settings: Settings, worker: WorkerProcess, mode: str | list[str]
) -> None:
    remote = RunnableK8s(ref=GRAPH, settings=settings)
    streamed = list(remote.stream(state(), stream_mode=mode))
    assert shape(streamed) == shape(local_stream(stream_mode=mode))
    assert streamed


def test_graph_subgraph_stream_keeps_its_namespaced_shape(
    settings: Settings, worker: WorkerProcess
) -> None:
    remote = RunnableK8s(ref=GRAPH, settings=settings)
    for mode in ("updates", ["values", "updates"]):
        streamed = list(remote.stream(state(), stream_mode=mode, subgraphs=True))
        assert shape(streamed) == shape(local_stream(stream_mode=mode, subgraphs=True))


def test_cli_submit_stream_then_result_prints_the_final_state(
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

    question = {"messages": [{"role": "user", "content": QUESTION}]}
    run_id = cli("submit", GRAPH, "--ref", "--stream", "--input", json.dumps(question))
    printed = json.loads(cli("result", run_id, "--timeout", "30"))
    expected = local_invoke()
    assert list(printed) == ["messages"]
    assert [(m["kwargs"]["type"], m["kwargs"]["content"]) for m in printed["messages"]] == [
        (m.type, m.content) for m in expected["messages"]
    ]


def test_graph_run_streaming_events_keeps_the_final_state_as_its_result(
    settings: Settings, worker: WorkerProcess
) -> None:
    # What `astream_events` over RunnableK8s submits: a stream that also carries model events.
    request = RunRequest(
        run_id=new_run_id(),
        mode="stream",
        name=GRAPH,
        runnable=b"",
        input=data_codec().encode_data(state()),
        expires_at=time.time() + 600,
        ref=GRAPH,
        events=True,
    )
    client_for(settings).submit([request])
    run = RemoteRun(request.run_id, settings)
    assert shape(run.result(timeout=30)) == shape(local_invoke())
