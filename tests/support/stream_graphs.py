"""A graph that uses every stream mode: a parent whose node writes custom data
(`get_stream_writer()`), a subgraph whose node calls a chat model (token chunks for "messages")
and writes custom data too. Workers import it because the tests that use it allow
`tests.support.stream_graphs:` in RUNNABLE_K8S_ALLOWED_REFS."""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph

from runnable_k8s.models import DemoChatModel


def _plan(state: MessagesState) -> dict[str, Any]:
    get_stream_writer()({"progress": "planning", "seen": len(state["messages"])})
    return {}


async def _answer(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
    writer = get_stream_writer()
    writer({"progress": "asking the model"})
    reply = await DemoChatModel().ainvoke(state["messages"], config)
    writer(("done", len(reply.content)))  # a tuple, as a node may write
    return {"messages": [reply]}


def _build_child() -> CompiledStateGraph[Any, Any, Any, Any]:
    builder = StateGraph(MessagesState)
    builder.add_node("answer", _answer)
    builder.add_edge(START, "answer")
    builder.add_edge("answer", END)
    return builder.compile()


def build() -> CompiledStateGraph[Any, Any, Any, Any]:
    builder = StateGraph(MessagesState)
    builder.add_node("plan", _plan)
    builder.add_node("child", _build_child())
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "child")
    builder.add_edge("child", END)
    return builder.compile()


graph = build()
