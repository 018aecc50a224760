"""LangGraph's `Interrupt`, `Command` and `Send` in the data codec: a shape of our own, rebuilt
from its fields (never by a class name in the payload), with stand-ins where LangGraph is not
importable, and what an interrupted run is to Celery."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from langgraph.types import Command, Interrupt, Send

from runnable_k8s.errors import DisallowedObject, SerializationRefused
from runnable_k8s.protocol import interrupts
from runnable_k8s.protocol.codec import Codec, data_codec
from runnable_k8s.worker.task_state import Handled, failure


@pytest.fixture
def codec() -> Codec:
    return data_codec()


@pytest.mark.parametrize(
    "value",
    [
        {"draft": "d", "__interrupt__": [Interrupt(value={"q": "ok?"}, id="a1")]},
        {"__interrupt__": (Interrupt(value="x", id="a1"), Interrupt(value=[1], id="b2"))},
        {"__interrupt__": [Interrupt(value=1, id="a1", response_schema={"type": "boolean"})]},
        Command(resume="yes"),
        Command(resume={"a1": {"lc": 1, "type": "constructor"}, "b2": None}),
        Command(update={"draft": "edited"}, goto="publish"),
        Command(goto=[Send("publish", {"draft": "x"}), "write"]),
        Command(goto=(Send("publish", 1),)),
        Command(graph=Command.PARENT, goto=Send("n", None)),
    ],
)
def test_interrupts_and_commands_round_trip_as_langgraph_objects(codec: Codec, value: Any) -> None:
    back = codec.decode_data(codec.encode_data(value, what="input"))
    assert back == value
    assert type(back) is type(value)


def test_user_data_shaped_like_our_tag_stays_plain_data(codec: Codec) -> None:
    forged = {"lc": 1, "type": "runnable_k8s", "id": ["interrupt"], "value": 1, "interrupt_id": "x"}
    assert codec.decode_data(codec.encode_data({"user": forged})) == {"user": forged}


def test_decoded_tags_build_only_value_objects_from_checked_fields(codec: Codec) -> None:
    def raw(node: dict[str, Any]) -> bytes:
        return json.dumps({"lc": 1, "type": "runnable_k8s", **node}).encode()

    for node in (
        {"id": ["os", "system"], "value": "ls"},
        {"id": ["interrupt"], "value": 1, "interrupt_id": 5},
        {"id": ["send"], "node": ["a"], "arg": 1},
        {"id": ["command"], "graph": "other", "goto": [], "goto_shape": "list"},
        {"id": ["command"], "graph": None, "goto": {"x": 1}, "goto_shape": "one"},
        {"id": ["command"], "graph": None, "goto": "n", "goto_shape": "eval"},
    ):
        with pytest.raises(DisallowedObject):
            codec.decode_data(raw(node))


def test_without_langgraph_the_caller_gets_stand_ins_with_the_same_attributes(
    codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = codec.encode_data({"__interrupt__": [Interrupt(value={"q": 1}, id="a1")]})
    command = codec.encode_data(Command(resume="y", goto=Send("n", 2)))
    monkeypatch.setitem(sys.modules, "langgraph.types", None)  # import now raises ImportError

    (pending,) = codec.decode_data(raw)["__interrupt__"]
    assert type(pending) is interrupts.Interrupt
    assert (pending.value, pending.id) == ({"q": 1}, "a1")
    resumed = codec.decode_data(command)
    assert resumed == interrupts.Command(resume="y", goto=interrupts.Send("n", 2))
    # And the stand-ins travel back as LangGraph's classes once they are importable.
    again = codec.encode_data(resumed)
    monkeypatch.undo()
    assert codec.decode_data(again) == Command(resume="y", goto=Send("n", 2))


def test_a_command_field_that_cannot_travel_is_named(codec: Codec) -> None:
    with pytest.raises(SerializationRefused, match=r"at update\.when, "):
        codec.encode_data(Command(update={"when": {1, 2}}), what="input")
    with pytest.raises(SerializationRefused, match=r"Send\.node must be a node name"):
        codec.encode_data(Command(goto=Send(3, None)), what="input")  # type: ignore[arg-type]


def test_an_interrupted_run_is_a_successful_celery_task() -> None:
    assert failure(Handled("r1", "interrupted")) is None
    assert failure(Handled("r1", "failed", "ValueError")) is not None
