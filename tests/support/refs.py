"""Application code that cannot travel as JSON, run by reference. Workers import it because
the test settings allow `tests.support.refs:` in RUNNABLE_K8S_ALLOWED_REFS, as a user's worker
image would allow its own package."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import os
from pathlib import Path
from typing import Any

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langgraph.graph import END, START, MessagesState, StateGraph

from runnable_k8s.models import DemoChatModel
from tests.support.models import ConfigProbe, TransientError

prompt = ChatPromptTemplate.from_messages(
    [("system", "You are a Pokemon expert."), ("human", "{input}")]
)
# A RunnableLambda: refused by RunnableK8s(bound=...), fine by reference.
lambda_chain = prompt | DemoChatModel() | StrOutputParser() | RunnableLambda(str.upper)


async def _sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


slow = RunnableLambda(_sleep)
probe = ConfigProbe()

_calls = itertools.count(1)


def _flaky(text: str) -> str:
    call = next(_calls)
    if call % 3:  # fails twice, then succeeds
        raise TransientError(f"rate limited (call {call})")
    return f"{text} after retries"


flaky = RunnableLambda(_flaky)


def _when(text: str) -> datetime.datetime:
    return datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


# Returns a value JSON has no type for: its output is refused on the worker.
returns_datetime = RunnableLambda(_when)


async def _call_model(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
    reply = await DemoChatModel().ainvoke(state["messages"], config)
    return {"messages": [reply]}


def _count(state: MessagesState) -> dict[str, Any]:
    return {}


def build_graph(checkpointer: Any = None) -> Runnable[Any, Any]:
    builder = StateGraph(MessagesState)
    builder.add_node("model", _call_model)
    builder.add_node("done", _count)
    builder.add_edge(START, "model")
    builder.add_edge("model", "done")
    builder.add_edge("done", END)
    return builder.compile(checkpointer=checkpointer)


# A graph without memory, and a factory for one whose conversations live in a SQLite file
# every worker on this machine shares (in a cluster: Postgres via langgraph-checkpoint-postgres).
graph = build_graph()


async def make_chat_graph() -> Runnable[Any, Any]:
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    conn = await aiosqlite.connect(os.environ["RK8S_TEST_GRAPH_DB"])
    saver = AsyncSqliteSaver(conn)
    await saver.setup()
    return build_graph(saver)


class OutsideException(BaseException):
    """Raised by application code that subclasses BaseException directly (not Exception)."""


_ESCAPES: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "OutsideException": OutsideException,
}


async def _escape(name: str) -> str:
    # Raised in the run's own task: nothing above the runnable may let it through.
    raise _ESCAPES[name](f"{name} from the runnable")


async def _escape_in_child_task(name: str) -> str:
    # Raised in a task the runnable starts: asyncio re-raises SystemExit and
    # KeyboardInterrupt out of the event loop itself before the awaiting run sees them.
    return await asyncio.ensure_future(_escape(name))


async def _escape_mid_stream(name: str) -> Any:
    yield f"before {name}"
    raise _ESCAPES[name](f"{name} mid-stream")


escapes = RunnableLambda(_escape)
escapes_in_child_task = RunnableLambda(_escape_in_child_task)
escapes_mid_stream = RunnableLambda(_escape_mid_stream)


async def _own_redis_down(text: str) -> Any:
    # The application's own Redis (a cache, a vector store) failing: the runnable's error.
    import redis.exceptions

    yield f"{text} before"
    raise redis.exceptions.ConnectionError("the application's Redis is down")


own_redis_down = RunnableLambda(_own_redis_down)


def _fails_first(job: dict[str, Any]) -> str:
    # Counts calls in a file, so the count survives retries, workers and processes.
    counter = Path(job["counter"])
    calls = int(counter.read_text() or 0) + 1 if counter.exists() else 1
    counter.write_text(str(calls))
    if calls <= int(job["fail"]):
        raise TransientError(f"provider unavailable (call {calls})")
    return f"succeeded on call {calls}"


# Fails its first `fail` calls (counted in the file `counter`), then succeeds.
fails_first = RunnableLambda(_fails_first)
