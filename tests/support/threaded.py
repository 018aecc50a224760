"""A counter graph on one SQLite checkpointer shared by every worker of a test, whose node
records when it enters and leaves (a line per event, appended to RK8S_TEST_THREAD_LOG) so a
test can prove that no two runs of one thread ever overlapped. Workers import it because the
thread tests allow `tests.support.threaded:` in RUNNABLE_K8S_ALLOWED_REFS."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from typing import Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph


class Counter(TypedDict, total=False):
    count: int
    nap: float
    label: str
    steps: int


def _record(event: str, state: Counter, config: RunnableConfig) -> None:
    line = {
        "event": event,
        "label": state.get("label", ""),
        "thread": config["configurable"]["thread_id"],
        "count": state.get("count", 0),
        "at": time.time(),
        "pid": os.getpid(),
    }
    # One write of a short line in append mode: lines from several processes never interleave.
    with open(os.environ["RK8S_TEST_THREAD_LOG"], "a") as log:
        log.write(json.dumps(line) + "\n")


async def _increment(state: Counter, config: RunnableConfig) -> dict[str, Any]:
    _record("enter", state, config)
    count = state.get("count", 0)
    await asyncio.sleep(state.get("nap", 0))
    _record("exit", state, config)
    return {"count": count + 1, "steps": state.get("steps", 1) - 1}


def _again(state: Counter) -> str:
    return "increment" if state.get("steps", 0) > 0 else END


def counter() -> CompiledStateGraph[Any, Any, Any, Any]:
    """`{"nap": s, "label": x, "steps": n}` adds n to the thread's count, one step at a time,
    each step taking `nap` seconds (a checkpoint after each)."""
    conn = sqlite3.connect(os.environ["RK8S_TEST_SQLITE_DB"], check_same_thread=False, timeout=30)
    saver = SqliteSaver(conn)
    saver.setup()
    builder = StateGraph(Counter)
    builder.add_node("increment", _increment)
    builder.add_edge(START, "increment")
    builder.add_conditional_edges("increment", _again)
    return builder.compile(checkpointer=saver)


def read_log(path: str) -> list[dict[str, Any]]:
    with open(path) as log:
        return [json.loads(line) for line in log if line.strip()]
