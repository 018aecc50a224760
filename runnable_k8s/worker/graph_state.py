"""The state API of a referenced graph, called on the worker, where its checkpointer lives.

A request with a `GraphCall` runs one of `aget_state`, `aget_state_history` or `aupdate_state`
on the graph its reference names (after the same allowlist check as any run), and its output
is the answer as data (see `protocol.graph_state`). Sync checkpointers work here as in runs:
the registry has already given the graph an async face over them.
"""

from __future__ import annotations

import sys
from typing import Any

from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig

from runnable_k8s.errors import DisallowedObject
from runnable_k8s.protocol.graph_state import GraphCall, snapshot_data
from runnable_k8s.protocol.remote_config import import_config


def _graph(runnable: Runnable[Any, Any], ref: str | None) -> Any:
    # langgraph is the application's: its module has imported it if the ref is a graph.
    pregel = getattr(sys.modules.get("langgraph.pregel"), "Pregel", None)
    inner: Runnable[Any, Any] = runnable
    while isinstance(inner, RunnableBinding):
        inner = inner.bound
    if pregel is None or not isinstance(inner, pregel):
        raise DisallowedObject(
            f"{ref!r} is a {type(inner).__name__}, not a compiled LangGraph graph: only graphs "
            "have a state API (get_state, get_state_history, update_state)"
        )
    return inner


async def call_graph(
    runnable: Runnable[Any, Any],
    call: GraphCall,
    payload: Any,
    config: RunnableConfig,
    ref: str | None,
) -> Any:
    """What the state API call returns, as data for the output codec.

    Raises:
        DisallowedObject: the reference is not a graph, or `before` is not a valid config.
        Whatever LangGraph raises (e.g. no checkpointer, an unknown `as_node`): the run's error.
    """
    graph = _graph(runnable, ref)
    if call.op == "get_state":
        return snapshot_data(await graph.aget_state(config, subgraphs=call.subgraphs))
    if call.op == "get_state_history":
        before = import_config(call.before) if call.before is not None else None
        history = graph.aget_state_history(
            config, filter=call.filter, before=before, limit=call.limit
        )
        return [snapshot_data(snapshot) async for snapshot in history]
    updated = await graph.aupdate_state(config, payload, as_node=call.as_node, task_id=call.task_id)
    return dict(updated)
