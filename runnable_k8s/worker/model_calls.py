"""What flow control reads from a model call: the chat models inside a runnable, the tokens a
call used, and the tenant of its run."""

from __future__ import annotations

import string
from collections.abc import Iterator
from typing import Any, Final

from langchain_core.language_models import BaseChatModel
from langchain_core.outputs import LLMResult
from pydantic import BaseModel

_TENANT_CHARS: Final = frozenset(string.ascii_letters + string.digits + "_.-/")


def tenant_of(value: Any) -> str | None:
    """The tenant named by a run's metadata, as it may appear in a key name."""
    # A tenant becomes part of a Redis key name: anything unusual shares one budget.
    if not isinstance(value, str) or not value:
        return None
    if len(value) > 100 or not set(value) <= _TENANT_CHARS:
        return "_invalid"
    return value


def tokens_of(response: LLMResult) -> int | None:
    """Tokens a call used, from its usage metadata (None: the model reported none)."""
    total = 0
    found = False
    for generations in response.generations:
        for generation in generations:
            usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
            if usage:
                total += int(usage.get("total_tokens", 0))
                found = True
    if not found:
        usage = (response.llm_output or {}).get("token_usage") or {}
        if isinstance(usage, dict) and "total_tokens" in usage:
            return int(usage["total_tokens"])
    return total if found else None


def chat_models(root: Any) -> Iterator[BaseChatModel]:
    """Every chat model reachable through pydantic fields, lists and dicts."""
    seen: set[int] = set()
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, BaseChatModel):
            yield node
            continue
        if isinstance(node, BaseModel):
            stack.extend(getattr(node, name, None) for name in type(node).model_fields)
        elif isinstance(node, list | tuple):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())


def input_size(messages: list[list[Any]]) -> int:
    """Characters of a call's input messages: what its token estimate is scaled by."""
    total = 0
    for batch in messages:
        for message in batch:
            content = getattr(message, "content", "")
            total += len(content) if isinstance(content, str) else len(str(content))
    return total
