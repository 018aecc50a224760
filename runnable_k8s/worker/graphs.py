"""Streaming a LangGraph graph (a Pregel: compiled graphs, `create_agent` agents) so that its
run's result is what `invoke` returns.

A graph's chunks do not add up to its output: its default stream mode yields each node's
update, while `invoke` returns the final state. So the graph is asked for the caller's stream
mode(s) plus "updates" and "values"; only what the caller asked for is published, in the shape
in-process `astream` would have yielded it, and the result is built as `Pregel.ainvoke` builds
it: the root graph's last "values", with the interrupts its updates reported.

langgraph is the application's dependency, not ours: a graph's module has imported it before
the graph reaches the worker, so it is looked up in `sys.modules`, never imported here.
"""

from __future__ import annotations

import sys
from typing import Any, Final

from langchain_core.runnables import Runnable, RunnableBinding

from runnable_k8s.protocol.interrupts import KeepTuples

_INTERRUPT: Final = "__interrupt__"  # langgraph.constants.INTERRUPT


def graph_stream(runnable: Runnable[Any, Any], call: dict[str, Any]) -> GraphStream | None:
    """How to stream `runnable` if it is a graph (itself, or under `.bind(...)` or
    `.with_config(...)`), called with keyword arguments `call`; None for any other runnable."""
    pregel = getattr(sys.modules.get("langgraph.pregel"), "Pregel", None)
    if pregel is None:
        return None
    # A binding calls what it wraps with {**its kwargs, **the caller's}: outer ones win.
    effective: dict[str, Any] = {}
    inner: Runnable[Any, Any] = runnable
    while isinstance(inner, RunnableBinding):
        effective = {**inner.kwargs, **effective}
        inner = inner.bound
    if not isinstance(inner, pregel):
        return None
    return GraphStream(getattr(inner, "stream_mode", "values"), {**effective, **call}, call)


class GraphStream:
    def __init__(self, default_mode: Any, effective: dict[str, Any], call: dict[str, Any]) -> None:
        mode = effective.get("stream_mode")
        mode = default_mode if mode is None else mode
        self._single = isinstance(mode, str)
        self._modes: list[str] = [mode] if isinstance(mode, str) else [str(m) for m in mode]
        self._subgraphs = bool(effective.get("subgraphs", False))
        self._v2 = effective.get("version", "v1") == "v2"
        internal = list(dict.fromkeys([*self._modes, "updates", "values"]))
        self.kwargs: dict[str, Any] = {**call, "stream_mode": internal}
        self._latest: Any = None
        self._interrupts: list[Any] = []

    def take(self, item: Any) -> list[Any]:
        """What in-process `astream` would have yielded for `item` (one item of the stream
        with the modes in `kwargs`): nothing, or the item in the caller's shape."""
        if self._v2:  # StreamPart dicts, the same shape for one mode or several
            part: dict[str, Any] = item if isinstance(item, dict) else {}
            kind = part.get("type")
            if not part.get("ns") and kind == "values":
                self._latest = part.get("data")
                self._interrupts.extend(part.get("interrupts", ()))
            if kind not in self._modes:
                return []
            return [KeepTuples(item) if _holds_tuple(item) else item]
        if self._subgraphs:
            namespace, kind, payload = item
        else:
            namespace, (kind, payload) = (), item
        if not namespace:
            self._note(kind, payload)
        if kind not in self._modes:
            return []
        shown = item
        if self._single:
            shown = (namespace, payload) if self._subgraphs else payload
        # `(mode, chunk)`, `(namespace, chunk)`, a "messages" `(chunk, metadata)` and a debug
        # task's triggers are tuples in-process: they must not arrive as lists.
        return [KeepTuples(shown) if _holds_tuple(shown) else shown]

    def _note(self, kind: str, payload: Any) -> None:
        if kind == "updates" and isinstance(payload, dict) and _INTERRUPT in payload:
            self._interrupts.extend(payload[_INTERRUPT])
        elif kind == "values":
            self._latest = payload

    def output(self) -> Any:
        """What `ainvoke` with the same arguments returns (see `Pregel.ainvoke`)."""
        if self._v2:
            graph_output = sys.modules["langgraph.types"].GraphOutput
            return graph_output(value=self._latest, interrupts=tuple(self._interrupts))
        if not self._interrupts:
            return self._latest
        if isinstance(self._latest, dict):
            return {**self._latest, _INTERRUPT: self._interrupts}
        return {_INTERRUPT: self._interrupts}


def _holds_tuple(value: Any, depth: int = 0) -> bool:
    """Whether a stream item has a tuple inside plain containers (objects in it, such as
    messages, are the codec's to encode). Deep trees are wrapped rather than walked to the end."""
    if isinstance(value, tuple):
        return True
    if depth > 20:
        return True
    if isinstance(value, dict):
        return any(_holds_tuple(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_holds_tuple(v, depth + 1) for v in value)
    return False
