"""The data codec: inputs, outputs and chunks, including the CVE-2025-68664 escaping."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import pytest
from langchain_core.agents import AgentFinish
from langchain_core.documents import Document
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue
from langchain_core.prompts import PromptTemplate
from pydantic import BaseModel

from runnable_k8s.errors import DisallowedObject, SerializationRefused
from runnable_k8s.protocol.codec import Codec, data_codec


@pytest.fixture
def codec() -> Codec:
    return data_codec()


def ai_with_tools() -> AIMessage:
    return AIMessage(
        content="calling",
        tool_calls=[{"name": "lookup", "args": {"q": "pikachu", "n": 2}, "id": "call-1"}],
        usage_metadata={"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
        response_metadata={"model_name": "m", "finish_reason": "tool_calls"},
        id="msg-1",
    )


@pytest.mark.parametrize(
    "value",
    [
        None,
        "text",
        42,
        1.5,
        True,
        [1, "two", None],
        {"a": {"b": [1, 2]}},
        "",
        'text mentioning not_implemented and "lc"',
    ],
)
def test_plain_json_round_trips(codec: Codec, value: Any) -> None:
    assert codec.decode_data(codec.encode_data(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        ai_with_tools(),
        AIMessageChunk(
            content="par",
            tool_call_chunks=[{"name": "f", "args": '{"a"', "id": "c", "index": 0}],
            usage_metadata={"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
        ),
        HumanMessage("hi", name="ash"),
        SystemMessage("be brief"),
        ToolMessage("result", tool_call_id="call-1"),
        ChatPromptValue(messages=[SystemMessage("s"), HumanMessage("h")]),
        StringPromptValue(text="a prompt"),
        Document(page_content="page", metadata={"source": "x", "n": 1}, id="doc-1"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_langchain_data_round_trips(codec: Codec, value: Any) -> None:
    restored = codec.decode_data(codec.encode_data(value))
    assert type(restored) is type(value)
    assert restored == value


def test_message_content_blocks_with_urls_are_data(codec: Codec) -> None:
    # Data classes open no connections: an image URL in content is not a redirect.
    message = HumanMessage(
        content=[
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/pikachu.png"}},
        ]
    )
    assert codec.decode_data(codec.encode_data(message)) == message


def test_tool_calls_and_usage_survive(codec: Codec) -> None:
    restored = codec.decode_data(codec.encode_data({"out": [ai_with_tools()]}))
    message = restored["out"][0]
    assert message.tool_calls == [
        {"name": "lookup", "args": {"q": "pikachu", "n": 2}, "id": "call-1", "type": "tool_call"}
    ]
    assert message.usage_metadata["total_tokens"] == 10


def test_chunks_still_add_up_after_travel(codec: Codec) -> None:
    chunks = [AIMessageChunk(content="Hel"), AIMessageChunk(content="lo")]
    travelled = [codec.decode_data(codec.encode_data(c)) for c in chunks]
    assert (travelled[0] + travelled[1]).content == "Hello"


@pytest.mark.parametrize(
    "value",
    [
        {"lc": 1, "type": "secret", "id": ["SOME_ENV"]},
        {
            "lc": 1,
            "type": "constructor",
            "id": ["langchain", "schema", "messages", "AIMessage"],
            "kwargs": {"content": "injected"},
        },
        {"lc": 1, "type": "constructor", "id": ["os", "system"], "kwargs": {"command": "id"}},
        {"user": [{"lc": 1, "type": "secret", "id": ["SOME_ENV"]}]},
        {"__lc_escaped__": {"lc": 1, "type": "secret", "id": ["SOME_ENV"]}},
    ],
)
def test_cve_2025_68664_user_dicts_stay_plain_data(
    codec: Codec, monkeypatch: pytest.MonkeyPatch, value: dict[str, Any]
) -> None:
    monkeypatch.setenv("SOME_ENV", "env-secret-value")
    raw = codec.encode_data(value)
    assert b"env-secret-value" not in raw
    restored = codec.decode_data(raw)
    assert restored == value
    assert b"env-secret-value" not in json.dumps(restored).encode()


def test_cve_user_dict_next_to_a_real_message(codec: Codec) -> None:
    value = {"msg": HumanMessage("hi"), "fake": {"lc": 1, "type": "secret", "id": ["HOME"]}}
    restored = codec.decode_data(codec.encode_data(value))
    assert restored["msg"] == HumanMessage("hi")
    assert restored["fake"] == {"lc": 1, "type": "secret", "id": ["HOME"]}


def test_unescaped_secret_reference_decodes_to_none(
    codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hand-written (signed) body that skips the escaping must still not read the environment.
    monkeypatch.setenv("HOME", "/home/secret-home")
    raw = b'{"a": {"lc": 1, "type": "secret", "id": ["HOME"]}}'
    assert codec.decode_data(raw) == {"a": None}


@pytest.mark.parametrize(
    "class_id",
    [
        ["langchain", "prompts", "prompt", "PromptTemplate"],
        ["langchain", "chat_models", "openai", "ChatOpenAI"],
        ["langchain_core", "made_up", "Exploit"],
        ["runnable_k8s", "models", "DemoChatModel"],
    ],
)
def test_non_data_classes_refused_at_decode(codec: Codec, class_id: list[str]) -> None:
    raw = json.dumps({"lc": 1, "type": "constructor", "id": class_id, "kwargs": {}}).encode()
    with pytest.raises(DisallowedObject):
        codec.decode_data(raw)


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (object(), "builtins.object"),
        (datetime.datetime(2026, 1, 1), "datetime.datetime"),
        (uuid.UUID(int=1), "uuid.UUID"),
        (b"bytes", "builtins.bytes"),
        ({1, 2}, "builtins.set"),
    ],
)
def test_unsupported_data_refused_naming_it(codec: Codec, value: Any, named: str) -> None:
    with pytest.raises(SerializationRefused, match=named):
        codec.encode_data(value, what="input")


def test_custom_object_refused_with_path(codec: Codec) -> None:
    class Custom:
        pass

    with pytest.raises(SerializationRefused) as caught:
        codec.encode_data({"items": [1, Custom()]}, what="output")
    text = str(caught.value)
    assert text.startswith("output contains")
    assert "Custom" in text
    assert "items[1]" in text


# A Serializable outside the data allowlist (AgentFinish, PromptTemplate, ...) is refused where
# it is encoded, naming it, instead of travelling and failing only on the other side.
@pytest.mark.parametrize(
    "value",
    [AgentFinish(return_values={"output": "x"}, log="done"), PromptTemplate.from_template("{x}")],
    ids=lambda v: type(v).__name__,
)
def test_serializable_outside_data_allowlist_refused_at_encode(codec: Codec, value: Any) -> None:
    with pytest.raises(SerializationRefused, match=type(value).__name__):
        codec.encode_data(value)


# Plain user data shaped like a not_implemented marker is escaped by dumps: it is data, not
# an unsupported object (the refusal must not walk into escaped user dicts).
def test_user_dict_shaped_like_a_marker_is_data(codec: Codec) -> None:
    value = {"lc": 1, "type": "not_implemented", "id": ["x"]}
    assert codec.decode_data(codec.encode_data(value)) == value


def test_deeply_nested_payload_refused(codec: Codec) -> None:
    inner: Any = {"lc": 1, "type": "secret", "id": ["X"]}
    for _ in range(250):
        inner = [inner]
    with pytest.raises(DisallowedObject, match="200"):
        codec.decode_data(json.dumps(inner).encode())


def test_nesting_within_the_limit_is_fine(codec: Codec) -> None:
    inner: Any = HumanMessage("deep")
    for _ in range(150):
        inner = [inner]
    restored = codec.decode_data(codec.encode_data(inner))
    for _ in range(150):
        restored = restored[0]
    assert restored == HumanMessage("deep")


# json.loads raises RecursionError (not ValueError) on pathological nesting: still a
# DisallowedObject, never an error outside the tree.
def test_pathologically_nested_data_is_disallowed(codec: Codec) -> None:
    with pytest.raises(DisallowedObject):
        codec.decode_data(b"[" * 100_000 + b"]" * 100_000)


# dumps raises RecursionError (not TypeError/ValueError) on deep nesting: still a
# SerializationRefused.
def test_pathologically_nested_data_refused_at_encode(codec: Codec) -> None:
    value: Any = 1
    for _ in range(5000):
        value = [value]
    with pytest.raises(SerializationRefused):
        codec.encode_data(value)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff", b"nope", b'{"a": 1'])
def test_malformed_data_disallowed(codec: Codec, raw: bytes) -> None:
    with pytest.raises(DisallowedObject, match="malformed"):
        codec.decode_data(raw)


def test_infinity_round_trips(codec: Codec) -> None:
    raw = codec.encode_data({"x": 1e308 * 10})
    assert codec.decode_data(raw) == {"x": float("inf")}


# Advice meant for runnables (widen the class allowlist, run by reference) never helps with data:
# the data allowlist is fixed, and a run by reference still sends its input.
_RUNNABLE_ADVICE = ("RUNNABLE_K8S_ALLOWED_CLASSES", "by reference", "ref=", "ALLOWED_REFS")


class _Point(BaseModel):
    x: int


@pytest.mark.parametrize(
    ("value", "instead"),
    [
        (datetime.datetime(2026, 1, 1), "ISO 8601 string (value.isoformat()"),
        (datetime.date(2026, 1, 1), "ISO 8601 string (value.isoformat()"),
        (datetime.timedelta(seconds=3), "value.total_seconds()"),
        (uuid.UUID(int=1), "str(value)"),
        (b"bytes", "base64"),
        ({1, 2}, "a list"),
        ({(1, 2): "tuple key"}, "a dict with string keys"),
        (_Point(x=1), "model_dump(mode='json')"),
        (PromptTemplate.from_template("{x}"), "its content as plain JSON"),
    ],
    ids=["datetime", "date", "timedelta", "uuid", "bytes", "set", "dict", "pydantic", "prompt"],
)
def test_refused_input_says_what_to_send_instead(codec: Codec, value: Any, instead: str) -> None:
    with pytest.raises(SerializationRefused) as caught:
        codec.encode_data({"when": value}, what="input")
    text = str(caught.value)
    assert text.startswith("input contains"), text
    assert instead in text.split(" Send ", 1)[1]
    assert "What can travel" in text
    assert not [advice for advice in _RUNNABLE_ADVICE if advice in text], text


@pytest.mark.parametrize(("what", "verb"), [("output", "returned"), ("stream chunk", "streamed")])
def test_refused_output_tells_the_runnable_what_to_return(
    codec: Codec, what: str, verb: str
) -> None:
    with pytest.raises(SerializationRefused) as caught:
        codec.encode_data([datetime.datetime(2026, 1, 1)], what=what)
    text = str(caught.value)
    assert text.startswith(f"{what} contains datetime.datetime at [0]"), text
    assert f"The runnable {verb} it on the worker" in text
    assert "Make the runnable return an ISO 8601 string" in text
    assert not [advice for advice in _RUNNABLE_ADVICE if advice in text], text


def test_value_json_cannot_encode_gets_data_advice(codec: Codec) -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(SerializationRefused) as caught:
        codec.encode_data(deep, what="input")
    text = str(caught.value)
    assert "What can travel" in text
    assert not [advice for advice in _RUNNABLE_ADVICE if advice in text], text
