"""Human-in-the-loop graphs (LangGraph `interrupt()`), compiled with `SqliteSaver` on a file that
every worker here shares. Workers import this module because the tests that use it allow
`tests.support.hitl:` in RUNNABLE_K8S_ALLOWED_REFS; the tests build the same graphs in-process
(on their own store) to compare with."""

from __future__ import annotations

import operator
import os
import sqlite3
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import interrupt

Graph = CompiledStateGraph[Any, Any, Any, Any]


class Review(TypedDict, total=False):
    draft: str
    answers: Annotated[list[Any], operator.add]
    log: Annotated[list[str], operator.add]


def _write(state: Review) -> dict[str, Any]:
    return {"draft": state.get("draft", "") or "first draft", "log": ["write"]}


def _approve(state: Review) -> dict[str, Any]:
    answer = interrupt({"question": "publish?", "draft": state.get("draft")})
    return {"answers": [answer], "log": ["approve"]}


def _legal(state: Review) -> dict[str, Any]:
    return {"answers": [interrupt({"question": "legal ok?"})], "log": ["legal"]}


def _publish(state: Review) -> dict[str, Any]:
    return {"log": ["publish"]}


def build_approval(saver: BaseCheckpointSaver[Any]) -> Graph:
    """write -> approve (interrupts) -> publish."""
    builder = StateGraph(Review)
    builder.add_node("write", _write)
    builder.add_node("approve", _approve)
    builder.add_node("publish", _publish)
    builder.add_edge(START, "write")
    builder.add_edge("write", "approve")
    builder.add_edge("approve", "publish")
    builder.add_edge("publish", END)
    return builder.compile(checkpointer=saver)


def build_two_reviews(saver: BaseCheckpointSaver[Any]) -> Graph:
    """write -> (approve, legal) in parallel, each interrupting -> publish."""
    builder = StateGraph(Review)
    builder.add_node("write", _write)
    builder.add_node("approve", _approve)
    builder.add_node("legal", _legal)
    builder.add_node("publish", _publish)
    builder.add_edge(START, "write")
    builder.add_edge("write", "approve")
    builder.add_edge("write", "legal")
    builder.add_edge(["approve", "legal"], "publish")
    builder.add_edge("publish", END)
    return builder.compile(checkpointer=saver)


def _saver() -> BaseCheckpointSaver[Any]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    # check_same_thread=False: the saver locks its connection itself (LangGraph's advice).
    saver = SqliteSaver(sqlite3.connect(os.environ["RK8S_TEST_SQLITE_DB"], check_same_thread=False))
    saver.setup()
    return saver


def approval() -> Graph:
    return build_approval(_saver())


def two_reviews() -> Graph:
    return build_two_reviews(_saver())


def build_nested(saver: BaseCheckpointSaver[Any]) -> Graph:
    """write -> review (a subgraph: approve, which interrupts) -> publish."""
    inner = StateGraph(Review)
    inner.add_node("approve", _approve)
    inner.add_edge(START, "approve")
    inner.add_edge("approve", END)
    builder = StateGraph(Review)
    builder.add_node("write", _write)
    builder.add_node("review", inner.compile())
    builder.add_node("publish", _publish)
    builder.add_edge(START, "write")
    builder.add_edge("write", "review")
    builder.add_edge("review", "publish")
    builder.add_edge("publish", END)
    return builder.compile(checkpointer=saver)


def nested() -> Graph:
    return build_nested(_saver())
