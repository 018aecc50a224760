"""The part of a caller's `RunnableConfig` that crosses the queue.

Callbacks, run ids and arbitrary Python objects stay with the caller (its callbacks see the
remote step as one run); JSON-safe keys travel and apply on the worker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from langchain_core.runnables import RunnableConfig

from runnable_k8s.errors import ConfigurationError, DisallowedObject

TRAVELLING_KEYS: Final = (
    "tags",
    "metadata",
    "run_name",
    "configurable",
    "recursion_limit",
    "max_concurrency",
)


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def json_safe_mapping(mapping: Mapping[str, Any]) -> dict[str, Any]:
    # LangChain puts private objects under "__..." keys of `configurable` (e.g. LangGraph's
    # "__pregel_*" internals); they are process-local by definition.
    return {
        str(key): value
        for key, value in mapping.items()
        if not str(key).startswith("__") and _json_safe(value)
    }


def export_config(config: RunnableConfig | None) -> dict[str, Any]:
    """The JSON-safe, travelling part of `config` (silently drops what cannot travel)."""
    if not config:
        return {}
    configurable = config.get("configurable")
    if isinstance(configurable, Mapping) and "thread_id" in configurable:
        thread_id = configurable["thread_id"]
        if not isinstance(thread_id, str):
            # A checkpointer keys threads by string: an int here would name another thread
            # than its string form on the worker's store, or be dropped as not JSON-safe.
            raise ConfigurationError(
                f"config['configurable']['thread_id'] must be a string, not "
                f"{type(thread_id).__name__} ({thread_id!r:.60}): use str(...)"
            )
    out: dict[str, Any] = {}
    for key in TRAVELLING_KEYS:
        value = config.get(key)
        if value is None:
            continue
        if key in ("metadata", "configurable") and isinstance(value, Mapping):
            safe = json_safe_mapping(value)
            if safe:
                out[key] = safe
        elif key == "tags" and isinstance(value, list | tuple):
            out[key] = [str(tag) for tag in value]
        elif _json_safe(value):
            out[key] = value
    return out


def import_config(raw: Any) -> RunnableConfig:
    """Validate a travelled config on the worker. Raises `DisallowedObject` on wrong types."""
    if not isinstance(raw, dict) or not set(raw) <= set(TRAVELLING_KEYS):
        raise DisallowedObject("config carries keys that may not travel")
    config: RunnableConfig = {}
    if "tags" in raw:
        tags = raw["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise DisallowedObject("config.tags must be a list of strings")
        config["tags"] = tags
    for key in ("metadata", "configurable"):
        if key in raw and not isinstance(raw[key], dict):
            raise DisallowedObject(f"config.{key} must be an object")
    if "metadata" in raw:
        config["metadata"] = json_safe_mapping(raw["metadata"])
    if "configurable" in raw:
        config["configurable"] = json_safe_mapping(raw["configurable"])
    if "run_name" in raw:
        if not isinstance(raw["run_name"], str):
            raise DisallowedObject("config.run_name must be a string")
        config["run_name"] = raw["run_name"]
    for key in ("recursion_limit", "max_concurrency"):
        value = raw.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise DisallowedObject(f"config.{key} must be a positive integer")
    if "recursion_limit" in raw:
        config["recursion_limit"] = raw["recursion_limit"]
    if "max_concurrency" in raw:
        config["max_concurrency"] = raw["max_concurrency"]
    return config
