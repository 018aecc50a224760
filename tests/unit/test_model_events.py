"""Model events on the wire (protocol/model_events.py): what a worker sends for
`astream_events`, through the real data codec, and what a caller accepts back."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage

from runnable_k8s.protocol import model_events
from runnable_k8s.protocol.messages import Protocol
from runnable_k8s.protocol.model_events import ModelEventKind


def _through_the_codec(protocol: Protocol, value: Any) -> Any:
    return protocol.data.decode_data(protocol.data.encode_data(value))


def test_every_kind_round_trips_through_the_codec(protocol: Protocol) -> None:
    run_id = uuid.uuid4()
    for kind in ModelEventKind:
        data: dict[str, Any] = {
            "input": {"messages": [[HumanMessage("hi")]]},
            "chunk": AIMessageChunk(content="tok"),
            "output": AIMessageChunk(content="tok"),
        }
        langchain_event = {
            "event": kind.value,
            "run_id": run_id,  # LangChain's are UUIDs: they travel as text
            "name": "FakeChat",
            "tags": ["seq:step:2", 7],
            "metadata": {"ls_provider": "fake", "thread_id": "t1"},
            "data": data,
            "parent_ids": ["ignored"],
        }
        wire = model_events.to_wire(langchain_event, protocol.data.encode_data)
        back = model_events.from_wire(_through_the_codec(protocol, wire))
        assert back is not None
        assert back.kind is kind
        assert back.run_id == str(run_id)
        assert back.name == "FakeChat"
        assert back.tags == ("seq:step:2", "7")
        assert back.metadata == {"ls_provider": "fake", "thread_id": "t1"}
        assert back.data["chunk"] == AIMessageChunk(content="tok")
        assert back.data["input"] == {"messages": [[HumanMessage("hi")]]}
        assert "parent_ids" not in wire


def test_kinds_say_what_they_are() -> None:
    assert [k for k in ModelEventKind if k.starts] == [
        ModelEventKind.CHAT_MODEL_START,
        ModelEventKind.LLM_START,
    ]
    assert [k for k in ModelEventKind if k.streams] == [
        ModelEventKind.CHAT_MODEL_STREAM,
        ModelEventKind.LLM_STREAM,
    ]
    assert [k for k in ModelEventKind if k.ends] == [
        ModelEventKind.CHAT_MODEL_END,
        ModelEventKind.LLM_END,
    ]
    assert {k for k in ModelEventKind if k.chat} == {
        ModelEventKind.CHAT_MODEL_START,
        ModelEventKind.CHAT_MODEL_STREAM,
        ModelEventKind.CHAT_MODEL_END,
    }
    assert model_events.is_model_event("on_chat_model_stream")
    assert not model_events.is_model_event("on_chain_stream")
    assert not model_events.is_model_event(None)


def test_a_value_the_codec_refuses_is_left_out_not_the_event(protocol: Protocol) -> None:
    class NotData:
        pass

    wire = model_events.to_wire(
        {"event": "on_llm_end", "run_id": "r", "data": {"output": NotData(), "input": "p"}},
        protocol.data.encode_data,
    )
    assert wire["data"] == {"input": "p"}
    back = model_events.from_wire(_through_the_codec(protocol, wire))
    assert back is not None and back.kind is ModelEventKind.LLM_END
    assert dict(back.data) == {"input": "p"}


@pytest.mark.parametrize(
    "hostile",
    [
        None,
        "on_llm_end",
        ["on_llm_end"],
        {"event": "on_chain_end", "run_id": "r"},
        {"event": 3, "run_id": "r"},
        {"run_id": "r"},
    ],
)
def test_what_is_not_a_model_event_is_no_event(hostile: Any) -> None:
    assert model_events.from_wire(hostile) is None


def test_fields_of_the_wrong_type_are_dropped() -> None:
    back = model_events.from_wire(
        {
            "event": "on_chat_model_start",
            "run_id": 5,
            "name": None,
            "tags": "not a list",
            "metadata": ["not", "a", "mapping"],
            "data": {"input": {"messages": []}, "extra": "dropped"},
        }
    )
    assert back is not None
    assert back.run_id == "5"
    assert back.name == ""
    assert back.tags == ()
    assert back.metadata == {}
    assert dict(back.data) == {"input": {"messages": []}}
    only_strings = model_events.from_wire(
        {"event": "on_llm_stream", "run_id": "r", "tags": ["ok", 1, None], "data": "x"}
    )
    assert only_strings is not None
    assert only_strings.tags == ("ok",)
    assert only_strings.data == {}
