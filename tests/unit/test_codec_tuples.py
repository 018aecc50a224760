"""Tuples in a graph's stream items arrive as tuples: `KeepTuples` marks an item, the codec
tags each tuple inside it, and decoding rebuilds them; elsewhere tuples stay lists (JSON)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk
from langgraph.types import GraphOutput, Interrupt

from runnable_k8s.errors import DisallowedObject, SerializationRefused
from runnable_k8s.protocol.codec import data_codec
from runnable_k8s.protocol.interrupts import KeepTuples, has_interrupts


def _travel(value: Any) -> Any:
    codec = data_codec()
    return codec.decode_data(codec.encode_data(value, what="stream chunk"))


def test_tuples_inside_keep_tuples_arrive_as_tuples() -> None:
    chunk = AIMessageChunk(content="hi", id="m1")
    item = (("child:1",), "messages", (chunk, {"langgraph_triggers": ("branch:to:x",), "n": [1]}))
    got = _travel(KeepTuples(item))
    assert got == item
    assert type(got[2][1]["langgraph_triggers"]) is tuple
    assert type(got[2][1]["n"]) is list
    assert _travel(KeepTuples(())) == ()
    pending = {"__interrupt__": (Interrupt(value=1, id="i"),), "pair": (1, 2)}
    assert _travel(KeepTuples(pending)) == pending


def test_without_the_marker_tuples_stay_lists() -> None:
    assert _travel({"pair": (1, (2, 3))}) == {"pair": [1, [2, 3]]}


def test_a_malformed_tuple_tag_is_refused() -> None:
    raw = json.dumps({"lc": 1, "type": "runnable_k8s", "id": ["tuple"], "items": {"a": 1}})
    with pytest.raises(DisallowedObject, match="malformed tuple"):
        data_codec().decode_data(raw.encode())


def test_a_graph_output_travels_with_its_interrupts() -> None:
    # What `invoke(..., version="v2")` returns, and a v2 stream's result.
    sent = GraphOutput(value={"draft": "d"}, interrupts=(Interrupt(value={"q": 1}, id="i1"),))
    got = _travel(sent)
    assert type(got) is GraphOutput and got == sent
    assert has_interrupts(got) and not has_interrupts(GraphOutput(value=1))
    raw = json.dumps({"lc": 1, "type": "runnable_k8s", "id": ["graph_output"], "interrupts": [1]})
    with pytest.raises(DisallowedObject, match="malformed graph output"):
        data_codec().decode_data(raw.encode())


def test_a_kept_tuple_item_that_cannot_travel_is_refused() -> None:
    item = ("custom", {"when": datetime.datetime(2026, 1, 1)})
    with pytest.raises(SerializationRefused, match=r"stream chunk contains datetime\.datetime"):
        data_codec().encode_data(KeepTuples(item), what="stream chunk")
