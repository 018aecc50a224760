"""A compact encoding for LangChain's message types, the common stream chunk.

LangChain's full dump of an `AIMessageChunk` walks the class's MRO for secrets and
attributes, and our codec then parses the JSON again to check every object against the
allowlist; loading revives it through the `Reviver`. A message of one of the exact types below
holds only plain JSON in its constructor arguments, so it is written as `[tag, kwargs]`, with
the same kwargs as the full dump, and rebuilt as `Class(**kwargs)`: the same object a full
dump and load give (tests/unit/test_codec_compact.py compares them), at a fraction of the cost.
Anything else (a subclass, a value inside that is not plain JSON) returns None and takes the
full codec.

Loading is as strict as the full codec's: the tag names a class from the fixed table below
(never a path from the payload), the class must be in the allowlist, the init validator sees
the kwargs, and pydantic validates them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from langchain_core.load.serializable import Serializable
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    ChatMessageChunk,
    FunctionMessage,
    FunctionMessageChunk,
    HumanMessage,
    HumanMessageChunk,
    SystemMessage,
    SystemMessageChunk,
    ToolMessage,
    ToolMessageChunk,
)

from runnable_k8s.errors import DisallowedObject

MARK: Final = b"\x01"
"""Marks compact data. JSON text never starts with this byte (nor does `codec`'s text mark)."""

_TYPES: Final[tuple[type[Serializable], ...]] = (
    AIMessageChunk,
    AIMessage,
    HumanMessage,
    HumanMessageChunk,
    SystemMessage,
    SystemMessageChunk,
    ToolMessage,
    ToolMessageChunk,
    ChatMessage,
    ChatMessageChunk,
    FunctionMessage,
    FunctionMessageChunk,
)
_TAGS: Final[dict[type[Any], str]] = {cls: cls.__name__ for cls in _TYPES}
_CLASSES: Final[dict[str, type[Serializable]]] = {cls.__name__: cls for cls in _TYPES}
_PATHS: Final[dict[str, tuple[str, ...]]] = {cls.__name__: tuple(cls.lc_id()) for cls in _TYPES}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    required: bool
    default: Any
    empty_container: type[Any] | None  # dict or list: a default factory LangChain skips


def _fields(cls: type[Serializable]) -> tuple[_Field, ...]:
    found = []
    for name, info in cls.model_fields.items():
        if info.exclude:
            continue
        factory = info.default_factory
        container = factory if factory in (dict, list) else None
        required = info.is_required()
        default = None if required else info.get_default(call_default_factory=True)
        found.append(_Field(name, required, default, cast("type[Any] | None", container)))
    return tuple(found)


_FIELDS: Final = {cls: _fields(cls) for cls in _TYPES}


def _kwargs(value: Serializable) -> dict[str, Any]:
    """The constructor arguments LangChain's `to_json` writes for these message types (its
    `_is_field_useful`, with each field's facts computed once; none of these types has
    secrets; `lc_attributes` adds AIMessage's tool calls)."""
    kwargs: dict[str, Any] = {}
    values = value.__dict__
    for field in _FIELDS[type(value)]:
        item = values.get(field.name)
        if field.required or item:
            kwargs[field.name] = item
        elif field.empty_container is not None and isinstance(item, field.empty_container):
            continue
        elif item != field.default:
            kwargs[field.name] = item
    kwargs.update(value.lc_attributes)
    return kwargs


def encode(value: Any) -> bytes | None:
    """The compact encoding of `value`, or None when it needs the full codec."""
    tag = _TAGS.get(type(value))
    if tag is None:
        return None
    try:
        # No `default`: anything that is not plain JSON raises, and takes the full codec.
        text = json.dumps([tag, _kwargs(value)], separators=(",", ":"), ensure_ascii=False)
        return MARK + text.encode()
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
        return None


def decode(
    raw: bytes,
    allowed: frozenset[tuple[str, ...]] | set[tuple[str, ...]],
    validator: Callable[[tuple[str, ...], dict[str, Any]], Any],
) -> Any:
    """Rebuild a compact message.

    Raises:
        DisallowedObject: malformed, an unknown tag, a class outside `allowed`, or arguments
            the validator or the class refuses.
    """
    try:
        tag, kwargs = json.loads(raw[len(MARK) :])
    except (ValueError, TypeError, RecursionError) as exc:
        raise DisallowedObject(f"malformed compact data: {type(exc).__name__}") from exc
    cls = _CLASSES.get(tag) if isinstance(tag, str) else None
    if cls is None or not isinstance(kwargs, dict):
        raise DisallowedObject("compact data names no known message type")
    path = _PATHS[tag]
    if path not in allowed:
        raise DisallowedObject(f"{'.'.join(path)} is not in the allowlist")
    try:
        validator(path, kwargs)
        return cls(**kwargs)
    except DisallowedObject:
        raise
    except Exception as exc:  # pydantic's validation, or the validator's refusal
        raise DisallowedObject(f"cannot construct {tag}: {type(exc).__name__}") from exc
