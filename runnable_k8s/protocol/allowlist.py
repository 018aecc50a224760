"""Which classes may be rebuilt from a payload, and with which constructor arguments.

Signing proves a message came from someone holding the key; the allowlist limits what even a
key holder (or a bug) can make a worker construct. Two lists: runnables (what may run) and data
(what inputs, outputs and chunks may contain).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from langchain_core.documents import Document
from langchain_core.load.load import default_init_validator
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
    RemoveMessage,
    SystemMessage,
    SystemMessageChunk,
    ToolMessage,
    ToolMessageChunk,
)
from langchain_core.output_parsers import (
    CommaSeparatedListOutputParser,
    MarkdownListOutputParser,
    NumberedListOutputParser,
    StrOutputParser,
)
from langchain_core.prompt_values import ChatPromptValue, ChatPromptValueConcrete, StringPromptValue
from langchain_core.prompts import (
    AIMessagePromptTemplate,
    ChatMessagePromptTemplate,
    ChatPromptTemplate,
    HumanMessagePromptTemplate,
    MessagesPlaceholder,
    PromptTemplate,
    SystemMessagePromptTemplate,
)
from langchain_core.runnables import (
    RunnableBinding,
    RunnableParallel,
    RunnablePassthrough,
    RunnablePick,
    RunnableSequence,
)
from langchain_core.runnables.passthrough import RunnableAssign

from runnable_k8s.errors import ConfigurationError, DisallowedObject

MESSAGE_CLASSES: tuple[type[Serializable], ...] = (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    ChatMessageChunk,
    FunctionMessage,
    FunctionMessageChunk,
    HumanMessage,
    HumanMessageChunk,
    RemoveMessage,
    SystemMessage,
    SystemMessageChunk,
    ToolMessage,
    ToolMessageChunk,
)

DATA_CLASSES: tuple[type[Serializable], ...] = (
    *MESSAGE_CLASSES,
    ChatPromptValue,
    ChatPromptValueConcrete,
    StringPromptValue,
    Document,
)

RUNNABLE_CLASSES: tuple[type[Serializable], ...] = (
    *MESSAGE_CLASSES,
    ChatPromptTemplate,
    PromptTemplate,
    MessagesPlaceholder,
    SystemMessagePromptTemplate,
    HumanMessagePromptTemplate,
    AIMessagePromptTemplate,
    ChatMessagePromptTemplate,
    StrOutputParser,
    CommaSeparatedListOutputParser,
    NumberedListOutputParser,
    MarkdownListOutputParser,
    RunnableSequence,
    RunnableParallel,
    RunnablePassthrough,
    RunnableAssign,
    RunnablePick,
    RunnableBinding,
)

# Importable only where the extra is installed; allowlisted when present.
_OPTIONAL_RUNNABLES = (
    "langchain_openai:ChatOpenAI",
    "runnable_k8s.models:DemoChatModel",
)

# Constructor keywords a payload may never set, matched as substrings of the lower-cased key
# at any depth of a constructor's kwargs (so `model_kwargs={"base_url": ...}` is caught too).
# Each of these could send a request, and with it the worker's API key, somewhere else, or
# replace the HTTP machinery. Conservative on purpose: a false refusal is an error message; a
# false acceptance leaks a key.
FORBIDDEN_KWARG_PARTS: tuple[str, ...] = (
    "url",
    "base",
    "endpoint",
    "host",
    "header",
    "proxy",
    "client",
    "http",
    "transport",
    "socket",
    "ssl",
    "cert",
    "verify",
    "query",
    "token_provider",
)


def init_validator(class_path: tuple[str, ...], kwargs: dict[str, Any]) -> None:
    """Refuse jinja2 templates (LangChain's default check) and any payload-chosen endpoint,
    header, proxy or client, at any depth of the constructor arguments."""
    try:
        default_init_validator(class_path, kwargs)
    except ValueError as exc:
        raise DisallowedObject(f"{'.'.join(class_path)}: {exc}") from exc
    bad = _forbidden_key(kwargs)
    if bad is not None:
        raise DisallowedObject(
            f"{'.'.join(class_path)}: constructor argument {bad!r} may not come from a payload "
            "(endpoints, headers, proxies and HTTP clients are set in the worker's environment)"
        )


_NODE_KEYS = frozenset({"lc", "type", "id", "kwargs", "name", "graph"})


def _forbidden_key(value: Any, depth: int = 0) -> str | None:
    if depth > 50:
        return "<too deeply nested>"
    if isinstance(value, Mapping):
        # A nested constructor node is validated on its own when it is revived; only plain
        # dicts belong to this constructor. Never at depth 0: the kwargs themselves are
        # checked whatever keys they carry (a payload can add "lc" and "type" to them).
        if depth > 0 and value.get("type") == "constructor" and set(value) <= _NODE_KEYS:
            return None
        for key, item in value.items():
            lowered = str(key).lower()
            if any(part in lowered for part in FORBIDDEN_KWARG_PARTS):
                return str(key)
            found = _forbidden_key(item, depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for item in value:
            found = _forbidden_key(item, depth + 1)
            if found is not None:
                return found
    return None


def import_object(path: str) -> Any:
    """Import `module:attr` (or `module.attr`)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigurationError(f"{path!r} is not an import path like 'package.module:Name'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # a module may fail at import in any way (e.g. a missing env var)
        raise ConfigurationError(f"cannot import {path!r}: {type(exc).__name__}: {exc}") from exc
    return obj


@dataclass(frozen=True)
class Allowlist:
    """Classes that may be revived and the namespaces they may be imported from."""

    classes: tuple[type[Serializable], ...]
    namespaces: tuple[str, ...]

    def class_paths(self) -> frozenset[tuple[str, ...]]:
        return frozenset(tuple(cls.lc_id()) for cls in self.classes)


def _load_extra(paths: Iterable[str]) -> list[type[Serializable]]:
    extra: list[type[Serializable]] = []
    for path in paths:
        obj = import_object(path)
        if not (isinstance(obj, type) and issubclass(obj, Serializable)):
            raise ConfigurationError(f"{path!r} is not a LangChain Serializable class")
        extra.append(obj)
    return extra


@lru_cache(maxsize=16)
def runnable_allowlist(extra_paths: tuple[str, ...] = ()) -> Allowlist:
    """Built-in runnable classes, optional integrations that are installed, and `extra_paths`
    (the `RUNNABLE_K8S_ALLOWED_CLASSES` setting)."""
    classes: list[type[Serializable]] = list(RUNNABLE_CLASSES)
    for path in _OPTIONAL_RUNNABLES:
        try:
            classes.extend(_load_extra([path]))
        except ConfigurationError:
            continue  # the extra that provides it is not installed
    classes.extend(_load_extra(extra_paths))
    namespaces = sorted({cls.lc_id()[0] for cls in classes} | {"runnable_k8s"})
    return Allowlist(tuple(dict.fromkeys(classes)), tuple(namespaces))


def data_allowlist() -> Allowlist:
    """Classes allowed in inputs, outputs and stream chunks."""
    return Allowlist(DATA_CLASSES, ("langchain_core",))


def check_call_kwargs(kwargs: Any) -> dict[str, Any]:
    """Validate call keyword arguments for a referenced runnable: a JSON object whose keys
    name nothing that could redirect a request (same rule as constructor arguments)."""
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise DisallowedObject("call keyword arguments must be a JSON object")
    bad = _forbidden_key(kwargs)
    if bad is not None:
        raise DisallowedObject(f"call keyword argument {bad!r} may not come from a payload")
    return kwargs
