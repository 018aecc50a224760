"""The state API's wire form: a `GraphCall` travels signed in a request's head, a malformed one
is refused, and a snapshot rebuilds into LangGraph's classes (or the stand-ins without it)."""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.types import Interrupt, PregelTask, StateSnapshot

from runnable_k8s.errors import DisallowedObject, RemoteError, SignatureRejected
from runnable_k8s.protocol import graph_state
from runnable_k8s.protocol.codec import data_codec
from runnable_k8s.protocol.graph_state import (
    GraphCall,
    reads_only,
    snapshot_data,
    snapshot_from_data,
)
from runnable_k8s.protocol.messages import Protocol, RunRequest


def _request(call: GraphCall) -> RunRequest:
    return RunRequest(
        run_id="r1",
        mode="invoke",
        name="g",
        runnable=b"",
        input=b"null",
        expires_at=4102444800.0,
        ref="pkg.mod:graph",
        graph=call,
    )


@pytest.mark.parametrize(
    "call",
    [
        GraphCall("get_state", subgraphs=True),
        GraphCall("get_state_history", filter={"source": "loop"}, before={"tags": []}, limit=2),
        GraphCall("update_state", as_node="approve", task_id="t"),
    ],
)
def test_a_graph_call_travels_signed_in_the_request_head(
    protocol: Protocol, call: GraphCall
) -> None:
    wire, _ = protocol.seal_request(_request(call))
    assert protocol.open_request(wire).graph == call


@pytest.mark.parametrize(
    "raw",
    [
        {"op": "delete_thread"},
        {"op": "get_state", "subgraphs": "yes"},
        {"op": "get_state_history", "limit": -1},
        {"op": "get_state_history", "limit": True},
        {"op": "update_state", "as_node": 3},
        ["get_state"],
    ],
)
def test_a_malformed_graph_call_is_refused(raw: Any) -> None:
    with pytest.raises(SignatureRejected):
        GraphCall.from_json(raw)


def test_only_state_reads_read_only() -> None:
    assert reads_only(GraphCall("get_state")) and reads_only(GraphCall("get_state_history"))
    assert not reads_only(GraphCall("update_state")) and not reads_only(None)


def _snapshot() -> StateSnapshot:
    pending = Interrupt(value={"question": "ok?"}, id="i1")
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "c2"}}
    inner = StateSnapshot(
        {"n": 1}, ("b",), config, {"step": 1}, "2026-01-01T00:00:00", None, (), ()
    )
    return StateSnapshot(
        values={"draft": "d"},
        next=("approve",),
        config=config,
        metadata={"source": "loop", "step": 1},
        created_at="2026-01-01T00:00:00",
        parent_config={"configurable": {"thread_id": "t", "checkpoint_id": "c1"}},
        tasks=(
            PregelTask("t1", "approve", ("__pregel_pull", "approve"), None, (pending,), None),
            PregelTask("t2", "sub", ("__pregel_pull", "sub"), ValueError("boom"), (), inner),
        ),
        interrupts=(pending,),
    )


def _travelled(snapshot: StateSnapshot) -> Any:
    codec = data_codec()
    return codec.decode_data(codec.encode_data(snapshot_data(snapshot), what="output"))


def test_a_snapshot_rebuilds_as_langgraphs_classes() -> None:
    sent = _snapshot()
    got = snapshot_from_data(_travelled(sent), run_id="r1")
    assert type(got) is StateSnapshot and type(got.tasks[0]) is PregelTask
    assert got._replace(tasks=()) == sent._replace(tasks=())
    assert got.tasks[0] == sent.tasks[0]
    error = got.tasks[1].error
    assert isinstance(error, RemoteError) and error.remote_type == "ValueError"
    assert got.tasks[1]._replace(error=None) == sent.tasks[1]._replace(error=None)
    # Read back from a checkpointer, an error is its text: it stays text.
    stored = sent._replace(tasks=(sent.tasks[1]._replace(error="ValueError('boom')"),))
    assert snapshot_from_data(_travelled(stored)) == stored


def test_without_langgraph_a_snapshot_rebuilds_as_stand_ins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(graph_state, "_types", lambda: None)
    got = snapshot_from_data(_travelled(_snapshot()))
    assert type(got) is graph_state.StateSnapshot
    assert got._fields == StateSnapshot._fields
    assert got.next == ("approve",) and got.tasks[0].path == ("__pregel_pull", "approve")


def test_data_that_is_not_a_snapshot_is_refused() -> None:
    for raw in (None, {"values": {}}, {"kind": "state_snapshot", "tasks": {}, "next": []}):
        with pytest.raises(DisallowedObject):
            snapshot_from_data(raw)
