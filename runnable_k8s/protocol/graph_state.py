"""The compiled graph's state API as a run: which call a request makes (`GraphCall`, signed in
the request's head like every other field), and its answer, a `StateSnapshot`, as data.

A graph's checkpointer lives on the workers, so `get_state`, `get_state_history` and
`update_state` run there, on the graph the request names by reference. The snapshot travels as
a plain dict of its fields (its values, interrupts and task results through the data codec,
like any output) and is rebuilt here, explicitly, field by field: LangGraph's `StateSnapshot`
and `PregelTask` where LangGraph is importable, the stand-ins below (same fields, same order)
where not. A task's error, when it is an exception in-process, arrives as a `RemoteError`
(read back from a checkpointer it is text, and stays text).

langgraph is the application's dependency, not ours: it is imported lazily.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, cast, get_args

from runnable_k8s.errors import DisallowedObject, RemoteError, SignatureRejected

GraphOp = Literal["get_state", "get_state_history", "update_state"]
GRAPH_OPS: Final = frozenset(get_args(GraphOp))


@dataclass(frozen=True, slots=True)
class GraphCall:
    """One call of the state API. The config it applies to is the request's config; for
    `update_state` the values are the request's input."""

    op: GraphOp
    subgraphs: bool = False
    """`get_state(..., subgraphs=True)`: tasks carry their subgraph's snapshot."""
    as_node: str | None = None
    task_id: str | None = None
    filter: dict[str, Any] | None = None
    """`get_state_history(filter=...)`: checkpoint metadata to match (JSON)."""
    before: dict[str, Any] | None = None
    """`get_state_history(before=...)`: an exported config (see `remote_config`)."""
    limit: int | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op}
        if self.subgraphs:
            out["subgraphs"] = True
        for key in ("as_node", "task_id", "filter", "before", "limit"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, raw: Any) -> GraphCall:
        """Parse a verified head field.

        Raises:
            SignatureRejected: unknown operation or mistyped fields.
        """
        if not isinstance(raw, dict) or raw.get("op") not in GRAPH_OPS:
            raise SignatureRejected("graph call has an unknown operation")
        subgraphs = raw.get("subgraphs", False)
        limit = raw.get("limit")
        if (
            not isinstance(subgraphs, bool)
            or not all(_opt(raw.get(k), str) for k in ("as_node", "task_id"))
            or not all(_opt(raw.get(k), dict) for k in ("filter", "before"))
            or not (limit is None or (type(limit) is int and limit >= 0))
        ):
            raise SignatureRejected("graph call has mistyped fields")
        return cls(
            op=raw["op"],
            subgraphs=subgraphs,
            as_node=raw.get("as_node"),
            task_id=raw.get("task_id"),
            filter=raw.get("filter"),
            before=raw.get("before"),
            limit=limit,
        )


def reads_only(call: GraphCall | None) -> bool:
    """Whether a request only reads a thread's checkpoints (`get_state`, `get_state_history`):
    such a call need not wait for the thread's active run, as in-process it would not."""
    return call is not None and call.op != "update_state"


def _opt(value: Any, kind: type) -> bool:
    return value is None or isinstance(value, kind)


class PregelTask(NamedTuple):
    """Stands in for `langgraph.types.PregelTask` where LangGraph is not installed."""

    id: str
    name: str
    path: tuple[Any, ...]
    error: Exception | None = None
    interrupts: tuple[Any, ...] = ()
    state: Any = None
    result: Any | None = None


class StateSnapshot(NamedTuple):
    """Stands in for `langgraph.types.StateSnapshot` where LangGraph is not installed."""

    values: Any
    next: tuple[str, ...]
    config: dict[str, Any]
    metadata: dict[str, Any] | None
    created_at: str | None
    parent_config: dict[str, Any] | None
    tasks: tuple[PregelTask, ...]
    interrupts: tuple[Any, ...]


_KIND: Final = "state_snapshot"


# -- worker side: a snapshot as data -----------------------------------------------------------


def snapshot_data(snapshot: Any) -> dict[str, Any]:
    """A `StateSnapshot` as a dict of its fields, for the data codec (values, interrupts and
    task results are encoded, and refused if they cannot travel, by the codec)."""
    return {
        "kind": _KIND,
        "values": snapshot.values,
        "next": list(snapshot.next),
        "config": snapshot.config,
        "metadata": snapshot.metadata,
        "created_at": snapshot.created_at,
        "parent_config": snapshot.parent_config,
        "tasks": [_task_data(task) for task in snapshot.tasks],
        "interrupts": list(snapshot.interrupts),
    }


def _task_data(task: Any) -> dict[str, Any]:
    error = task.error
    state = task.state
    return {
        "id": task.id,
        "name": task.name,
        "path": _listed(task.path),
        # Read back from a checkpointer, a task's error is already text (its repr): kept as is.
        "error": error
        if error is None or isinstance(error, str)
        else {"type": type(error).__name__, "message": str(error)},
        "interrupts": list(task.interrupts),
        # A subgraph's own snapshot (get_state(subgraphs=True)), else the config to ask it by.
        "state": snapshot_data(state) if hasattr(state, "tasks") else state,
        "result": task.result,
    }


def _listed(path: Any) -> Any:
    # A task path nests tuples of names and indexes; anything else is shown by its repr.
    if isinstance(path, tuple | list):
        return [_listed(p) for p in path]
    if path is None or isinstance(path, str | int | float | bool):
        return path
    return repr(path)


# -- producer side: the snapshot rebuilt -------------------------------------------------------


def _types() -> Any:
    try:
        return importlib.import_module("langgraph.types")
    except ImportError:
        return None


def snapshot_from_data(raw: Any, *, run_id: str | None = None) -> Any:
    """The `StateSnapshot` a decoded `snapshot_data` stands for.

    Raises:
        DisallowedObject: the data is not a snapshot's shape.
    """
    types = _types()
    snapshot = types.StateSnapshot if types is not None else StateSnapshot
    task = types.PregelTask if types is not None else PregelTask
    return _snapshot(raw, snapshot, task, run_id)


def _snapshot(raw: Any, snapshot: Any, task: Any, run_id: str | None) -> Any:
    if not isinstance(raw, dict) or raw.get("kind") != _KIND:
        raise DisallowedObject("malformed state snapshot")
    tasks, nexts = raw.get("tasks"), raw.get("next")
    if not isinstance(tasks, list) or not isinstance(nexts, list):
        raise DisallowedObject("malformed state snapshot")
    return snapshot(
        values=raw.get("values"),
        next=tuple(str(n) for n in nexts),
        config=_mapping(raw.get("config")),
        metadata=raw.get("metadata"),
        created_at=raw.get("created_at"),
        parent_config=raw.get("parent_config"),
        tasks=tuple(_task(t, snapshot, task, run_id) for t in tasks),
        interrupts=tuple(raw.get("interrupts") or ()),
    )


def _task(raw: Any, snapshot: Any, task: Any, run_id: str | None) -> Any:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        raise DisallowedObject("malformed state snapshot task")
    error = raw.get("error")
    if isinstance(error, dict):
        error = RemoteError(str(error.get("type")), str(error.get("message")), "", run_id=run_id)
    elif not isinstance(error, str):
        error = None
    state = raw.get("state")
    if isinstance(state, dict) and state.get("kind") == _KIND:
        state = _snapshot(state, snapshot, task, run_id)
    return task(
        id=raw["id"],
        name=str(raw.get("name", "")),
        path=_tupled(raw.get("path") or []),
        error=error,
        interrupts=tuple(raw.get("interrupts") or ()),
        state=state,
        result=raw.get("result"),
    )


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DisallowedObject("malformed state snapshot config")
    return cast(dict[str, Any], value)


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value
