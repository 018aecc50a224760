"""The compact encoding of messages: the same objects as LangChain's full dump and load, as
strictly checked on load, and the full codec for anything it does not cover."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from langchain_core.load import dumps
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    FunctionMessageChunk,
    HumanMessage,
    HumanMessageChunk,
    SystemMessage,
    ToolMessage,
    ToolMessageChunk,
)

from runnable_k8s.errors import DisallowedObject
from runnable_k8s.protocol import compact
from runnable_k8s.protocol.allowlist import data_allowlist
from runnable_k8s.protocol.codec import Codec, data_codec


@pytest.fixture
def codec() -> Codec:
    return data_codec()


def full(value: Any) -> Any:
    """What LangChain's full dump, loaded by the full codec (its `Reviver`), makes of `value`:
    the reference."""
    return data_codec().decode_data(dumps(value).encode())


SAMPLES: dict[str, Any] = {
    "token": AIMessageChunk(content="Pika", id="run-1"),
    "empty-last": AIMessageChunk(content="", chunk_position="last", id="run-1"),
    "tool-call-chunk": AIMessageChunk(
        content="",
        tool_call_chunks=[{"name": "lookup", "args": '{"q": "pik', "id": "call-1", "index": 0}],
    ),
    "usage-and-metadata": AIMessageChunk(
        content=[{"type": "text", "text": "hi", "index": 0}],
        usage_metadata={"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
        response_metadata={"model_name": "m", "finish_reason": "stop", "nested": {"lc": 1}},
        additional_kwargs={"refusal": None, "x": [1, 2.5, True]},
        name="assistant",
    ),
    "unicode": AIMessageChunk(content="ピカチュウ ⚡ \u2028"),
    "ai-with-tools": AIMessage(
        content="calling",
        tool_calls=[{"name": "lookup", "args": {"q": "pikachu"}, "id": "call-1"}],
        invalid_tool_calls=[{"name": "x", "args": "{", "id": "c2", "error": "bad"}],
        id="msg-1",
    ),
    "human": HumanMessage(content="hello", id="h1"),
    "human-chunk": HumanMessageChunk(content="hel"),
    "system": SystemMessage(content="be brief"),
    "tool": ToolMessage(content="42", tool_call_id="call-1", status="error", artifact=[1]),
    "tool-chunk": ToolMessageChunk(content="4", tool_call_id="call-1"),
    "chat": ChatMessage(content="hi", role="critic"),
    "function-chunk": FunctionMessageChunk(content="x", name="f"),
}


@pytest.mark.parametrize("name", SAMPLES)
def test_a_message_round_trips_to_what_the_full_dump_loads(codec: Codec, name: str) -> None:
    value = SAMPLES[name]
    raw = codec.encode_data(value)
    assert raw.startswith(compact.MARK)  # the compact path was taken
    back = codec.decode_data(raw)
    reference = full(value)
    assert type(back) is type(reference)
    assert back == reference
    assert back.model_dump() == reference.model_dump()


def test_kwargs_are_those_of_the_full_dump() -> None:
    for value in SAMPLES.values():
        written = json.loads(compact.encode(value)[len(compact.MARK) :])  # type: ignore[index]
        # (before the dump escapes user dicts that hold an "lc" key: compact data is never
        # revived, so it needs no escaping)
        kwargs = json.loads(json.dumps(value.to_json()["kwargs"]))
        assert written == [type(value).__name__, kwargs]


def test_what_is_not_plain_json_takes_the_full_codec(codec: Codec) -> None:
    class Special(AIMessageChunk):  # a subclass: not one of the exact types
        pass

    nested = AIMessageChunk(content="x", additional_kwargs={"msg": HumanMessage(content="in")})
    surrogate = AIMessageChunk(content="\ud800")
    for value in (nested, surrogate, Special(content="s")):
        assert compact.encode(value) is None
    back = codec.decode_data(codec.encode_data(nested))
    assert back == full(nested)
    assert codec.decode_data(codec.encode_data(surrogate)) == surrogate
    assert (
        compact.encode(AIMessageChunk(content="x", response_metadata={"f": math.nan})) is not None
    )


def _raw(tag: Any, kwargs: Any) -> bytes:
    return compact.MARK + json.dumps([tag, kwargs]).encode()


@pytest.mark.parametrize(
    ("raw", "refusal"),
    [
        (compact.MARK + b"not json", "malformed compact data"),
        (compact.MARK + b"[1]", "malformed compact data"),
        (_raw("Popen", {"args": "ls"}), "no known message type"),
        (_raw("langchain.schema.messages.AIMessage", {"content": "x"}), "no known message type"),
        (_raw("AIMessageChunk", ["content"]), "no known message type"),
        (_raw("AIMessageChunk", {"content": 5}), "cannot construct AIMessageChunk"),
        (_raw("ToolMessage", {"content": "x"}), "cannot construct ToolMessage"),
        (compact.MARK + b"[" * 100_000, "malformed compact data"),
    ],
)
def test_hostile_compact_data_is_refused(codec: Codec, raw: bytes, refusal: str) -> None:
    with pytest.raises(DisallowedObject, match=refusal):
        codec.decode_data(raw)


def test_a_class_outside_the_allowlist_is_refused() -> None:
    allowed = data_allowlist().class_paths() - {tuple(AIMessageChunk.lc_id())}
    with pytest.raises(DisallowedObject, match="not in the allowlist"):
        compact.decode(_raw("AIMessageChunk", {"content": "x"}), allowed, lambda *_: None)


def test_the_init_validator_sees_compact_kwargs() -> None:
    seen: list[Any] = []

    def refuse(path: tuple[str, ...], kwargs: dict[str, Any]) -> None:
        seen.append((path, kwargs))
        raise ValueError("refused by the validator")

    allowed = data_allowlist().class_paths()
    with pytest.raises(DisallowedObject, match="cannot construct"):
        compact.decode(_raw("HumanMessage", {"content": "x"}), allowed, refuse)
    assert seen == [(tuple(HumanMessage.lc_id()), {"content": "x"})]
