"""The travelling part of a RunnableConfig: exported on the producer, validated on the worker."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableConfig

from runnable_k8s.errors import ConfigurationError, DisallowedObject
from runnable_k8s.protocol.remote_config import TRAVELLING_KEYS, export_config, import_config


def test_only_travelling_keys_survive() -> None:
    config: RunnableConfig = {
        "tags": ["a", "b"],
        "metadata": {"user": "ash", "n": 1},
        "run_name": "remote-step",
        "configurable": {"temperature": 0.1},
        "recursion_limit": 10,
        "max_concurrency": 4,
        "callbacks": [BaseCallbackHandler()],
        "run_id": uuid.uuid4(),
    }
    out = export_config(config)
    assert out == {
        "tags": ["a", "b"],
        "metadata": {"user": "ash", "n": 1},
        "run_name": "remote-step",
        "configurable": {"temperature": 0.1},
        "recursion_limit": 10,
        "max_concurrency": 4,
    }
    assert set(out) <= set(TRAVELLING_KEYS)
    json.dumps(out)  # it travels as JSON
    assert import_config(out) == out


@pytest.mark.parametrize("config", [None, {}, {"callbacks": []}, {"tags": None}])
def test_nothing_to_export(config: Any) -> None:
    assert export_config(config) == {}


def test_non_json_and_private_values_dropped() -> None:
    lock = threading.Lock()
    config: RunnableConfig = {
        "metadata": {"ok": [1, {"x": "y"}], "obj": lock, "nan": float("nan"), "__private": 1},
        "configurable": {
            "thread_id": "t-1",
            "__pregel_send": lambda x: x,
            "__secret_but_json": "x",
            "client": object(),
        },
    }
    assert export_config(config) == {
        "metadata": {"ok": [1, {"x": "y"}]},
        "configurable": {"thread_id": "t-1"},
    }


def test_mappings_left_empty_are_omitted() -> None:
    assert export_config({"metadata": {"__x": 1}, "configurable": {"o": object()}}) == {}


def test_tags_become_strings_and_tuples_lists() -> None:
    out = export_config({"tags": ("a", 2)})  # type: ignore[typeddict-item]
    assert out == {"tags": ["a", "2"]}


def test_non_json_scalar_values_dropped() -> None:
    assert export_config({"run_name": object()}) == {}  # type: ignore[typeddict-item]


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        "tags",
        {"callbacks": []},
        {"run_id": "x"},
        {"tags": "a"},
        {"tags": ["a", 1]},
        {"metadata": []},
        {"configurable": "x"},
        {"run_name": 5},
        {"recursion_limit": 0},
        {"recursion_limit": "10"},
        {"recursion_limit": True},
        {"recursion_limit": 2.5},
        {"max_concurrency": -1},
        {"max_concurrency": False},
    ],
)
def test_import_rejects_wrong_types(raw: Any) -> None:
    with pytest.raises(DisallowedObject):
        import_config(raw)


def test_import_drops_private_keys_from_mappings() -> None:
    raw = {"metadata": {"__x": 1, "a": 1}, "configurable": {"__pregel_y": 2, "b": 2}}
    assert import_config(raw) == {"metadata": {"a": 1}, "configurable": {"b": 2}}


def test_import_of_empty_config() -> None:
    assert import_config({}) == {}


def test_a_thread_id_that_is_not_a_string_is_refused_not_dropped() -> None:
    assert export_config({"configurable": {"thread_id": "t1"}}) == {
        "configurable": {"thread_id": "t1"}
    }
    for thread_id in (1, 1.5, object(), ["t1"]):
        with pytest.raises(ConfigurationError, match=r"thread_id'\] must be a string"):
            export_config({"configurable": {"thread_id": thread_id}})
