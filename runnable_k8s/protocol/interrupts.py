"""LangGraph's human-in-the-loop objects as data: `Interrupt` in outputs and streams, `Command`
(with `Send` in its `goto`) in inputs.

They are not LangChain `Serializable`s, and they must never be rebuilt by a class loader named
in the payload. So each travels as a tagged JSON shape this module owns,
`{"lc": 1, "type": "runnable_k8s", "id": [kind], ...fields}`, and is rebuilt explicitly from
JSON-safe fields. The `"lc"` key is what makes the tag unforgeable by user data: LangChain's
`dumps` escapes every user dict that has an `"lc"` key (CVE-2025-68664), so only this module
ever writes an unescaped one of ours. A forged tag (written by hand into Redis, which a
signature already refuses) could at most build one of these three inert value objects.

langgraph is the application's dependency, not ours: the producer may not have it. It is
imported lazily, at decode time; where it is missing, `Interrupt`, `Command` and `Send` below
stand in with the same attributes.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from langchain_core.load import dumpd

from runnable_k8s.errors import DisallowedObject, SerializationRefused

TAG: Final = "runnable_k8s"
INTERRUPT_KEY: Final = "__interrupt__"  # langgraph.constants.INTERRUPT
PARENT: Final = "__parent__"  # langgraph.types.Command.PARENT
# Class paths (as LangChain's `not_implemented` markers name them) of the objects encoded here.
CLASS_PATHS: Final = frozenset(
    {
        ("langgraph", "types", "Interrupt"),
        ("langgraph", "types", "Command"),
        ("langgraph", "types", "Send"),
        ("langgraph", "types", "GraphOutput"),
        ("runnable_k8s", "protocol", "interrupts", "Interrupt"),
        ("runnable_k8s", "protocol", "interrupts", "Command"),
        ("runnable_k8s", "protocol", "interrupts", "Send"),
        ("runnable_k8s", "protocol", "interrupts", "KeepTuples"),
        ("runnable_k8s", "protocol", "interrupts", "GraphOutput"),
    }
)


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Stands in for `langgraph.types.Interrupt` where LangGraph is not installed."""

    value: Any
    id: str


@dataclass(frozen=True, slots=True)
class Send:
    """Stands in for `langgraph.types.Send` where LangGraph is not installed."""

    node: str
    arg: Any


@dataclass(frozen=True, slots=True)
class Command:
    """Stands in for `langgraph.types.Command` where LangGraph is not installed: send it as a
    graph's input to resume (`resume=`), change state (`update=`) or jump (`goto=`)."""

    graph: str | None = None
    update: Any | None = None
    resume: Any | None = None
    goto: Any = field(default=())
    PARENT = PARENT


@dataclass(frozen=True, slots=True)
class GraphOutput:
    """Stands in for `langgraph.types.GraphOutput` (what a graph's `invoke(..., version="v2")`
    returns) where LangGraph is not installed."""

    value: Any
    interrupts: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class KeepTuples:
    """Wraps a value (a graph's stream item) whose tuples must arrive as tuples: in-process,
    `("messages", (chunk, metadata))` and `(namespace, chunk)` are tuples, and JSON has only
    lists. Encoded, each tuple inside becomes a tagged shape; decoded, a tuple again."""

    item: Any


def _langgraph_types() -> Any:
    module = sys.modules.get("langgraph.types")
    if module is not None:
        return module
    try:
        return importlib.import_module("langgraph.types")
    except ImportError:
        return None


def _kind(node: Any) -> str | None:
    """Which of ours `node` is, judged by its exact class (never by duck typing)."""
    cls = type(node)
    path = (*cls.__module__.split("."), cls.__qualname__)
    if path not in CLASS_PATHS:
        return None
    return cls.__qualname__.lower()


def holds_tagged(tree: Any) -> bool:
    """Whether a dumped tree has a `not_implemented` marker for one of ours (then the value
    must be encoded again with `lift`)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("lc") == 1 and node.get("type") == "not_implemented":
                if tuple(node.get("id", ())) in CLASS_PATHS:
                    return True
                continue
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def lift(value: Any, *, tuples: bool = False) -> Any:
    """`dumpd(value)`, with interrupts, commands and sends as tagged shapes (and, with
    `tuples` or inside `KeepTuples`, tuples too).

    Raises:
        SerializationRefused: a `Command` field that cannot travel (named in the message).
    """
    kind = _kind(value)
    if kind == "keeptuples":
        return lift(value.item, tuples=True)
    if kind == "graphoutput":
        return {
            "lc": 1,
            "type": TAG,
            "id": ["graph_output"],
            "value": lift(value.value),
            "interrupts": [lift(i) for i in value.interrupts],
        }
    if kind == "interrupt":
        out: dict[str, Any] = {"lc": 1, "type": TAG, "id": ["interrupt"]}
        out["value"] = lift(value.value)
        out["interrupt_id"] = str(value.id)
        schema = getattr(value, "response_schema", None)
        if isinstance(schema, dict):  # a surfaced interrupt carries JSON Schema
            out["response_schema"] = dumpd(schema)
        return out
    if kind == "send":
        if not isinstance(value.node, str):
            raise SerializationRefused("Send.node must be a node name (a string)")
        return {"lc": 1, "type": TAG, "id": ["send"], "node": value.node, "arg": lift(value.arg)}
    if kind == "command":
        return _lift_command(value)
    if isinstance(value, tuple) and value and all(_kind(v) == "interrupt" for v in value):
        # A stream's `{"__interrupt__": (Interrupt(...),)}` update: a tuple in-process too.
        return {"lc": 1, "type": TAG, "id": ["interrupts"], "items": [lift(v) for v in value]}
    if isinstance(value, dict) and "lc" not in value and all(type(k) is str for k in value):
        return {k: lift(v, tuples=tuples) for k, v in value.items()}
    if tuples and isinstance(value, tuple):
        items = [lift(v, tuples=True) for v in value]
        return {"lc": 1, "type": TAG, "id": ["tuple"], "items": items}
    if isinstance(value, list | tuple):
        return [lift(v, tuples=tuples) for v in value]
    return dumpd(value)


def _lift_command(command: Any) -> dict[str, Any]:
    graph = command.graph
    if graph is not None and graph != PARENT:
        raise SerializationRefused(
            f"Command.graph must be None or Command.PARENT (the only values LangGraph "
            f"defines), not {graph!r}"
        )
    goto = command.goto
    gotos = list(goto) if isinstance(goto, list | tuple) else [goto]
    for target in gotos:
        if not (isinstance(target, str) or _kind(target) == "send"):
            raise SerializationRefused(
                f"Command.goto may name nodes (strings) or Send(node, arg), not "
                f"{type(target).__name__}"
            )
    out: dict[str, Any] = {"lc": 1, "type": TAG, "id": ["command"], "graph": graph}
    for name in ("update", "resume"):
        try:
            out[name] = lift(getattr(command, name))
        except SerializationRefused as exc:
            raise SerializationRefused(f"Command.{name}: {exc}") from exc
    many = isinstance(goto, list | tuple)
    out["goto"] = [lift(t) for t in gotos] if many else lift(goto)
    out["goto_shape"] = "tuple" if isinstance(goto, tuple) else "list" if many else "one"
    return out


def is_tagged(node: dict[str, Any]) -> bool:
    return node.get("lc") == 1 and node.get("type") == TAG


def rebuild(node: dict[str, Any], walk: Callable[[Any], Any]) -> Any:
    """The object a tagged shape stands for, from its JSON-safe fields (`walk` decodes nested
    values). LangGraph's classes where importable, the stand-ins above where not.

    Raises:
        DisallowedObject: an unknown kind or mistyped fields.
    """
    kind = node.get("id")
    types = _langgraph_types()
    if kind == ["interrupt"]:
        interrupt_id = node.get("interrupt_id")
        schema = node.get("response_schema")
        if not isinstance(interrupt_id, str) or not (schema is None or isinstance(schema, dict)):
            raise DisallowedObject("malformed interrupt")
        value = walk(node.get("value"))
        if types is None:
            return Interrupt(value=value, id=interrupt_id)
        if schema is not None:
            return types.Interrupt(value=value, id=interrupt_id, response_schema=walk(schema))
        return types.Interrupt(value=value, id=interrupt_id)
    if kind == ["interrupts"]:
        items = node.get("items")
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and i.get("id") == ["interrupt"] for i in items
        ):
            raise DisallowedObject("malformed interrupts")
        return tuple(rebuild(i, walk) for i in items)
    if kind == ["graph_output"]:
        pending = node.get("interrupts")
        if not isinstance(pending, list) or not all(
            isinstance(i, dict) and i.get("id") == ["interrupt"] for i in pending
        ):
            raise DisallowedObject("malformed graph output")
        output = GraphOutput if types is None else types.GraphOutput
        return output(
            value=walk(node.get("value")), interrupts=tuple(rebuild(i, walk) for i in pending)
        )
    if kind == ["tuple"]:
        items = node.get("items")
        if not isinstance(items, list):
            raise DisallowedObject("malformed tuple")
        return tuple(walk(i) for i in items)
    if kind == ["send"]:
        target = node.get("node")
        if not isinstance(target, str):
            raise DisallowedObject("malformed send")
        send = Send if types is None else types.Send
        return send(target, walk(node.get("arg")))
    if kind == ["command"]:
        return _rebuild_command(node, walk, types)
    raise DisallowedObject(f"unknown tagged object {kind!r}")


def _rebuild_command(node: dict[str, Any], walk: Callable[[Any], Any], types: Any) -> Any:
    graph = node.get("graph")
    if graph not in (None, PARENT):
        raise DisallowedObject("malformed command: graph")
    raw_goto = node.get("goto")
    shape = node.get("goto_shape")
    many = shape in ("list", "tuple")
    if shape not in ("one", "list", "tuple") or (many and not isinstance(raw_goto, list)):
        raise DisallowedObject("malformed command: goto")
    targets: list[Any] = raw_goto if isinstance(raw_goto, list) and many else [raw_goto]
    gotos: list[Any] = []
    for target in targets:
        if isinstance(target, str) or (
            isinstance(target, dict) and is_tagged(target) and target.get("id") == ["send"]
        ):
            gotos.append(target if isinstance(target, str) else rebuild(target, walk))
        else:
            raise DisallowedObject("malformed command: goto")
    goto: Any = (tuple(gotos) if shape == "tuple" else gotos) if many else gotos[0]
    command = Command if types is None else types.Command
    return command(
        graph=graph, update=walk(node.get("update")), resume=walk(node.get("resume")), goto=goto
    )


def plain(value: Any) -> Any:
    """A JSON form of an output for people and scripts (the CLI): LangChain objects as their
    serialized form, interrupts as `{"value": ..., "id": ...}`."""
    kind = _kind(value)
    if kind == "interrupt":
        return {"value": plain(value.value), "id": value.id}
    if isinstance(value, dict) and "lc" not in value and all(type(k) is str for k in value):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return dumpd(value)


def has_interrupts(output: Any) -> bool:
    """Whether a run's output says the graph stopped at `interrupt()` (as `invoke` reports
    it: a non-empty `__interrupt__` entry)."""
    if _kind(output) == "graphoutput":  # invoke(..., version="v2")
        return bool(output.interrupts)
    return isinstance(output, dict) and bool(output.get(INTERRUPT_KEY))
