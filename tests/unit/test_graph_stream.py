"""What the worker publishes and keeps for a graph's streamed run, against in-process LangGraph
(no worker: the same graph streamed here through `GraphStream`)."""

from __future__ import annotations

import uuid
from typing import Any, TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import GraphOutput, Interrupt, interrupt

from runnable_k8s.protocol.interrupts import KeepTuples
from runnable_k8s.worker.graphs import graph_stream


class State(TypedDict):
    text: str


def _shout(state: State) -> dict[str, Any]:
    return {"text": state["text"].upper()}


def _ask(state: State) -> dict[str, Any]:
    answer = interrupt({"question": f"ok to send {state['text']}?"})
    return {"text": f"{state['text']} ({answer})"}


def build(with_interrupt: bool) -> Any:
    builder = StateGraph(State)
    builder.add_node("shout", _shout)
    builder.add_edge(START, "shout")
    if with_interrupt:
        builder.add_node("ask", _ask)
        builder.add_edge("shout", "ask")
        builder.add_edge("ask", END)
    else:
        builder.add_edge("shout", END)
    return builder.compile(checkpointer=InMemorySaver())


def plain(value: Any) -> Any:
    """`value` without interrupt ids (they differ from one thread to the next), and without
    the `KeepTuples` wrapper (transparent on the wire: it only keeps tuples tuples)."""
    if isinstance(value, KeepTuples):
        return plain(value.item)
    if isinstance(value, Interrupt):
        return ("interrupt", value.value)
    if isinstance(value, GraphOutput):
        return ("output", plain(value.value), plain(value.interrupts))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    return value


def thread() -> dict[str, Any]:
    return {"configurable": {"thread_id": uuid.uuid4().hex}}


async def streamed(graph: Any, call: dict[str, Any]) -> tuple[list[Any], Any]:
    stream = graph_stream(graph, call)
    assert stream is not None
    published: list[Any] = []
    async for item in graph.astream({"text": "hi"}, thread(), **stream.kwargs):
        published.extend(stream.take(item))
    return published, stream.output()


@pytest.mark.parametrize("with_interrupt", [False, True])
@pytest.mark.parametrize(
    "call",
    [
        {},
        {"stream_mode": "values"},
        {"stream_mode": ["updates", "custom"]},
        {"stream_mode": "updates", "subgraphs": True},
        {"version": "v2"},
        {"stream_mode": ["values", "updates"], "version": "v2"},
    ],
)
async def test_graph_stream_publishes_what_astream_yields_and_keeps_what_invoke_returns(
    with_interrupt: bool, call: dict[str, Any]
) -> None:
    graph = build(with_interrupt)
    published, output = await streamed(graph, call)
    expected = [c async for c in graph.astream({"text": "hi"}, thread(), **call)]
    assert plain(published) == plain(expected)
    invoke_call = {k: v for k, v in call.items() if k == "version"}
    assert plain(output) == plain(await graph.ainvoke({"text": "hi"}, thread(), **invoke_call))
    if with_interrupt and "version" not in call:
        assert plain(output)["__interrupt__"] == [("interrupt", {"question": "ok to send HI?"})]


async def test_a_bound_graph_streams_with_the_binding_s_arguments() -> None:
    graph = build(False)
    bound = graph.bind(stream_mode="values")
    stream = graph_stream(bound, {})
    assert stream is not None
    published = [
        c
        async for item in bound.astream({"text": "hi"}, thread(), **stream.kwargs)
        for c in stream.take(item)
    ]
    assert published == [{"text": "hi"}, {"text": "HI"}]
    assert stream.output() == {"text": "HI"}


def test_other_runnables_are_not_graphs() -> None:
    from langchain_core.runnables import RunnableLambda

    assert graph_stream(RunnableLambda(str.upper), {}) is None
