"""Allowlists, the constructor-argument validator and `import_object`."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, FewShotPromptTemplate, PromptTemplate

from runnable_k8s.errors import ConfigurationError, DisallowedObject
from runnable_k8s.models import DemoChatModel
from runnable_k8s.protocol.allowlist import (
    data_allowlist,
    import_object,
    init_validator,
    runnable_allowlist,
)

CHAT_OPENAI = ("langchain", "chat_models", "openai", "ChatOpenAI")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "http://evil"},
        {"openai_api_base": "http://evil"},
        {"Base_URL": "http://evil"},
        {"azure_endpoint": "http://evil"},
        {"default_headers": {"x": "y"}},
        {"openai_proxy": "http://proxy"},
        {"http_client": None},
        {"http_async_client": None},
        {"root_client": None},
        {"default_query": {"a": "b"}},
        {"ssl_context": None},
        {"verify": False},
        {"cert": "/x"},
        {"azure_ad_token_provider": None},
        {"model_kwargs": {"extra": {"base_url": "http://evil"}}},
        {"model_kwargs": {"extra_headers": {"x": "y"}}},
        {"model_kwargs": {"extra_query": {"x": "y"}}},
        {"a": [{"b": [{"proxy": "http://p"}]}]},
        {"a": ({"socket_options": []},)},
    ],
)
def test_forbidden_kwargs_at_any_depth(kwargs: dict[str, Any]) -> None:
    with pytest.raises(DisallowedObject, match="may not come from a payload") as caught:
        init_validator(CHAT_OPENAI, kwargs)
    assert "ChatOpenAI" in str(caught.value)


def test_excessive_nesting_is_refused() -> None:
    value: Any = {"fine": 1}
    for _ in range(60):
        value = {"k": value}
    with pytest.raises(DisallowedObject, match="too deeply nested"):
        init_validator(CHAT_OPENAI, {"model_kwargs": value})


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"model_name": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 10},
        {"model_kwargs": {"top_p": 0.5, "nested": {"seed": [1, 2, {"x": 1}]}}},
        {"openai_api_key": {"lc": 1, "type": "secret", "id": ["OPENAI_API_KEY"]}},
        {"template": "{x}", "template_format": "f-string"},
    ],
)
def test_allowed_kwargs_pass(kwargs: dict[str, Any]) -> None:
    init_validator(CHAT_OPENAI, kwargs)


def test_nested_langchain_nodes_are_left_to_their_own_validation() -> None:
    # A nested constructor is validated when it is itself revived, with its own class path.
    nested = {"lc": 1, "type": "constructor", "id": ["x"], "kwargs": {"model": "m"}}
    init_validator(("langchain", "schema", "runnable", "RunnableSequence"), {"first": nested})


# Only a nested constructor node is left to its own validation: a mapping that merely looks
# like one (lc == 1 and a 'type' key), the constructor's own kwargs included, is checked, so
# {'lc': 1, 'type': 'x', 'openai_api_base': ...} is refused.
@pytest.mark.parametrize(
    "kwargs",
    [
        {"lc": 1, "type": "x", "openai_api_base": "http://evil"},
        {"model_kwargs": {"lc": 1, "type": "x", "extra": {"base_url": "http://evil"}}},
    ],
)
def test_lookalike_lc_mapping_does_not_hide_forbidden_kwargs(kwargs: dict[str, Any]) -> None:
    with pytest.raises(DisallowedObject):
        init_validator(CHAT_OPENAI, kwargs)


def test_jinja2_template_refused() -> None:
    with pytest.raises(DisallowedObject, match="PromptTemplate"):
        init_validator(
            ("langchain", "prompts", "prompt", "PromptTemplate"),
            {"template": "{{ x }}", "template_format": "jinja2", "input_variables": ["x"]},
        )


def test_import_object_spellings() -> None:
    assert import_object("json:dumps") is json.dumps
    assert import_object("json.dumps") is json.dumps
    assert import_object("langchain_core.prompts:PromptTemplate.from_template") == (
        PromptTemplate.from_template
    )
    assert import_object("langchain_core.prompts.PromptTemplate") is PromptTemplate


@pytest.mark.parametrize(
    "path", ["dumps", ":dumps", "json:", "no_such_module_xyz:thing", "json:no_such_attr", "json."]
)
def test_import_object_errors(path: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        import_object(path)
    assert repr(path) in str(caught.value)


def test_runnable_allowlist_builtins_and_optionals() -> None:
    allowlist = runnable_allowlist()
    paths = allowlist.class_paths()
    for cls in (ChatPromptTemplate, PromptTemplate, StrOutputParser, DemoChatModel, AIMessage):
        assert tuple(cls.lc_id()) in paths, cls
    assert CHAT_OPENAI in paths  # langchain_openai is installed here
    assert tuple(FewShotPromptTemplate.lc_id()) not in paths
    assert "runnable_k8s" in allowlist.namespaces
    assert "langchain" in allowlist.namespaces


def test_runnable_allowlist_extra_paths() -> None:
    allowlist = runnable_allowlist(("langchain_core.prompts:FewShotPromptTemplate",))
    assert tuple(FewShotPromptTemplate.lc_id()) in allowlist.class_paths()
    assert tuple(FewShotPromptTemplate.lc_id()) not in runnable_allowlist().class_paths()


@pytest.mark.parametrize("path", ["json:dumps", "langchain_core.runnables:Runnable", "nope:X"])
def test_extra_path_must_be_a_serializable_class(path: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(repr(path))):
        runnable_allowlist((path,))


def test_data_allowlist_is_narrow() -> None:
    allowlist = data_allowlist()
    paths = allowlist.class_paths()
    assert tuple(AIMessage.lc_id()) in paths
    assert tuple(PromptTemplate.lc_id()) not in paths
    assert CHAT_OPENAI not in paths
    assert allowlist.namespaces == ("langchain_core",)
