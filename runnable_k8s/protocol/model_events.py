"""The model events a stream carries for `astream_events`: their kinds and their dict.

Callbacks cannot cross processes, so a worker asked for events (`stream.ItemKind.EVENT`)
sends the callback events of every model inside the run as plain dicts, and the caller
replays them as child runs of its RunnableK8s step (producer/replay.py). This module is the
one place that says which events travel and what their dict holds: the worker builds it with
`to_wire` from LangChain's `astream_events(version="v2")` event, the producer reads it with
`from_wire`, which takes nothing on trust (the dict came out of Redis, decoded by the
protocol's data codec): a field of the wrong type is dropped, an unknown kind is no event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from runnable_k8s.errors import SerializationRefused
from runnable_k8s.protocol.remote_config import json_safe_mapping


class ModelEventKind(StrEnum):
    """The callback events of models that cross the boundary (README, "Streaming events")."""

    CHAT_MODEL_START = "on_chat_model_start"
    CHAT_MODEL_STREAM = "on_chat_model_stream"
    CHAT_MODEL_END = "on_chat_model_end"
    LLM_START = "on_llm_start"
    LLM_STREAM = "on_llm_stream"
    LLM_END = "on_llm_end"

    @property
    def starts(self) -> bool:
        return self in (ModelEventKind.CHAT_MODEL_START, ModelEventKind.LLM_START)

    @property
    def streams(self) -> bool:
        return self in (ModelEventKind.CHAT_MODEL_STREAM, ModelEventKind.LLM_STREAM)

    @property
    def ends(self) -> bool:
        return self in (ModelEventKind.CHAT_MODEL_END, ModelEventKind.LLM_END)

    @property
    def chat(self) -> bool:
        return self.value.startswith("on_chat_model_")


_KINDS: Final = frozenset(kind.value for kind in ModelEventKind)
# What of an event's `data` travels: a start's input, a token's chunk, an end's output.
DATA_KEYS: Final = ("input", "chunk", "output")


def is_model_event(name: object) -> bool:
    """Whether a LangChain event of this name is one a worker sends."""
    return name in _KINDS


@dataclass(frozen=True)
class ModelEvent:
    """One model callback event as the caller replays it."""

    kind: ModelEventKind
    run_id: str  # the model run's id on the worker: pairs a start with its tokens and end
    name: str = ""
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)


def to_wire(event: Mapping[str, Any], encodable: Callable[[Any], object]) -> dict[str, Any]:
    """The dict a worker sends for LangChain's `event`. `encodable` raises
    SerializationRefused for a value the data codec cannot carry: that value is left out (the
    event still travels), never the run failed for it."""
    raw = event.get("data")
    source: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    data: dict[str, Any] = {}
    for key in DATA_KEYS:
        if key in source:
            try:
                encodable(source[key])
            except SerializationRefused:
                continue
            data[key] = source[key]
    return {
        "event": str(event.get("event", "")),
        "run_id": str(event.get("run_id", "")),
        "name": str(event.get("name", "")),
        "tags": [str(t) for t in event.get("tags", None) or []],
        "metadata": json_safe_mapping(event.get("metadata", None) or {}),
        "data": data,
    }


def from_wire(value: object) -> ModelEvent | None:
    """The event a decoded stream item holds, or None for anything that is not one."""
    if not isinstance(value, Mapping):
        return None
    kind = value.get("event")
    if not isinstance(kind, str) or not is_model_event(kind):
        return None
    tags = value.get("tags")
    metadata = value.get("metadata")
    data = value.get("data")
    return ModelEvent(
        kind=ModelEventKind(kind),
        run_id=str(value.get("run_id", "")),
        name=name if isinstance(name := value.get("name"), str) else "",
        tags=tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
        metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
        data={k: data[k] for k in DATA_KEYS if k in data} if isinstance(data, Mapping) else {},
    )
