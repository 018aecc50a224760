"""Graphs compiled with LangGraph's synchronous checkpointers, run by reference: a counter that
carries its state from run to run on one thread. Workers import this module because the tests
that use it allow `tests.support.checkpointed:` in RUNNABLE_K8S_ALLOWED_REFS."""

from __future__ import annotations

import asyncio
import operator
import os
import sqlite3
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph


class Counter(TypedDict, total=False):
    count: int
    nodes: Annotated[list[str], operator.add]
    nap: float


def _increment(state: Counter) -> dict[str, Any]:
    # A sync node, as graphs written for sync checkpointers usually have.
    return {"count": state.get("count", 0) + 1, "nodes": ["increment"]}


async def _nap(state: Counter) -> dict[str, Any]:
    await asyncio.sleep(state.get("nap", 0))
    return {"nodes": ["nap"]}


def build_counter(saver: BaseCheckpointSaver[Any]) -> CompiledStateGraph[Any, Any, Any, Any]:
    builder = StateGraph(Counter)
    builder.add_node("increment", _increment)
    builder.add_node("nap", _nap)
    builder.add_edge(START, "increment")
    builder.add_edge("increment", "nap")
    builder.add_edge("nap", END)
    return builder.compile(checkpointer=saver)


def sqlite_counter() -> CompiledStateGraph[Any, Any, Any, Any]:
    """A sync factory: LangGraph's `SqliteSaver` on a file every worker here shares."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    # check_same_thread=False: the saver locks its connection itself (LangGraph's advice).
    conn = sqlite3.connect(os.environ["RK8S_TEST_SQLITE_DB"], check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    return build_counter(saver)


def postgres_counter() -> CompiledStateGraph[Any, Any, Any, Any]:
    """`PostgresSaver` on a connection pool (its tables were set up once, before any worker
    started: see the README on calling `setup()` at deploy time)."""
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    pool: ConnectionPool[Any] = ConnectionPool(
        os.environ["RK8S_TEST_POSTGRES_URL"],
        min_size=1,
        max_size=4,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        open=True,
    )
    return build_counter(PostgresSaver(pool))
