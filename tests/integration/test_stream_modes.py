"""Every LangGraph stream mode through a real worker, as in-process `astream` yields it:
"values", "updates", "messages" as `(chunk, metadata)` tuples, "custom" (`get_stream_writer()`),
"debug", several modes at once as `(mode, chunk)` tuples, and `subgraphs=True` as
`(namespace, chunk)` tuples. Tuples must arrive as tuples, not lists."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage

from runnable_k8s import RemoteRun, RunnableK8s, Settings
from tests.conftest import make_settings
from tests.support.stream_graphs import graph as local_graph
from tests.support.workers import WorkerProcess

GRAPH = "tests.support.stream_graphs:graph"
# What differs between two runs of one graph: ids (uuids, hex), times.
_VOLATILE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|lc_run--[0-9a-f-]+|\d{4}-\d\d-\d\dT[\d:.+]+"
)


@pytest.fixture(scope="module")
def settings_(redis_url: str, logs_dir: Path) -> Iterator[Settings]:
    settings = make_settings(redis_url, allowed_refs=("tests.support.stream_graphs:",))
    worker = WorkerProcess(settings, logs_dir, name="stream-modes")
    worker.wait_ready()
    try:
        yield settings
    finally:
        worker.stop()


def _question() -> dict[str, Any]:
    return {"messages": [HumanMessage("What does Pikachu evolve from?", id="q1")]}


def norm(value: Any) -> Any:
    """`value` with ids and times masked; containers keep their exact types (tuple vs list)."""
    if isinstance(value, BaseMessage):
        return (type(value).__name__, value.content, norm(value.id))
    if isinstance(value, str):
        return _VOLATILE.sub("<id>", value)
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(norm(v) for v in value)
    return value


def local(**kwargs: Any) -> list[Any]:
    async def collect() -> list[Any]:
        return [c async for c in local_graph.astream(_question(), **kwargs)]

    return asyncio.run(collect())


MODES: list[Any] = [
    "values",
    "updates",
    "messages",
    "custom",
    "debug",
    ["messages", "custom", "updates"],
    ["values", "debug"],
]


@pytest.mark.parametrize("subgraphs", [False, True])
@pytest.mark.parametrize("mode", MODES, ids=str)
def test_each_stream_mode_streams_what_astream_yields(
    settings_: Settings, mode: Any, subgraphs: bool
) -> None:
    remote = RunnableK8s(ref=GRAPH, settings=settings_)
    streamed = list(remote.stream(_question(), stream_mode=mode, subgraphs=subgraphs))
    expected = local(stream_mode=mode, subgraphs=subgraphs)
    assert streamed
    assert norm(streamed) == norm(expected)


@pytest.mark.parametrize("mode", ["messages", ["updates", "custom"]], ids=str)
def test_version_2_stream_parts_are_what_astream_yields(settings_: Settings, mode: Any) -> None:
    remote = RunnableK8s(ref=GRAPH, settings=settings_)
    call = {"stream_mode": mode, "subgraphs": True, "version": "v2"}
    streamed = list(remote.stream(_question(), **call))
    assert norm(streamed) == norm(local(**call))
    assert all(type(part["ns"]) is tuple for part in streamed)


def test_messages_are_chunk_and_metadata_tuples(settings_: Settings) -> None:
    remote = RunnableK8s(ref=GRAPH, settings=settings_)
    # Without subgraphs the parent sees the child node's finished message; with them, the
    # model's token chunks under the child's namespace.
    (only,) = list(remote.stream(_question(), stream_mode="messages"))
    assert type(only) is tuple and only[1]["langgraph_node"] == "child"
    tokens = list(remote.stream(_question(), stream_mode="messages", subgraphs=True))
    assert len(tokens) > 1
    for item in tokens:
        assert type(item) is tuple
        namespace, (chunk, metadata) = item
        assert type(namespace) is tuple and namespace[0].startswith("child:")
        assert isinstance(chunk, AIMessageChunk)
        assert metadata["langgraph_node"] == "answer"
    several = list(remote.stream(_question(), stream_mode=["messages", "custom"], subgraphs=True))
    assert {mode for _, mode, _ in several} == {"messages", "custom"}
    for item in several:
        assert type(item) is tuple and type(item[0]) is tuple
    custom = [p for _, mode, p in several if mode == "custom"]
    assert custom[0] == {"progress": "planning", "seen": 1}
    assert type(custom[-1]) is tuple and custom[-1][0] == "done"  # written as a tuple


def test_a_submitted_stream_and_async_stream_keep_the_shapes(settings_: Settings) -> None:
    remote = RunnableK8s(ref=GRAPH, settings=settings_)
    expected = norm(local(stream_mode=["custom", "updates"], subgraphs=True))

    async def collect() -> list[Any]:
        chunks = remote.astream(_question(), stream_mode=["custom", "updates"], subgraphs=True)
        return [c async for c in chunks]

    assert norm(asyncio.run(collect())) == expected
    run: RemoteRun = remote.submit(_question(), stream=True)
    assert norm(list(run.stream(timeout=60))) == norm(local())
