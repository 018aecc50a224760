"""The body a completion webhook's receiver gets (protocol/webhook.py `payload`)."""

from __future__ import annotations

import json

from langchain_core.messages import AIMessage

from runnable_k8s.protocol.messages import Outcome, Protocol, RemoteFailure, RunStatus
from runnable_k8s.protocol.reasons import Reason
from runnable_k8s.protocol.webhook import payload

KEYS = {
    "run_id",
    "state",
    "name",
    "attempt",
    "reason",
    "created_at",
    "started_at",
    "finished_at",
    "output",
    "error",
}


def test_a_succeeded_run_carries_its_output_in_serialized_form(protocol: Protocol) -> None:
    status = RunStatus("run-a", "succeeded", "chain", 1, 1.0, 2.0, 3.0)
    output = protocol.data.encode_data(AIMessage("hi"), what="output")
    body = json.loads(payload(status, Outcome("run-a", "succeeded", output=output), protocol))
    assert set(body) == KEYS
    assert (body["run_id"], body["state"], body["name"], body["finished_at"]) == (
        "run-a",
        "succeeded",
        "chain",
        3.0,
    )
    assert body["output"]["kwargs"]["content"] == "hi"
    assert body["error"] is None


def test_a_failed_run_carries_its_error_and_reason(protocol: Protocol) -> None:
    failure = RemoteFailure("builtins.KeyError", "'k'", "Traceback ...")
    status = RunStatus("run-a", "failed", reason="builtins.KeyError")
    body = json.loads(payload(status, Outcome("run-a", "failed", error=failure), protocol))
    assert body["error"] == failure.as_json()
    assert body["reason"] == "builtins.KeyError" and body["output"] is None


def test_without_an_outcome_the_status_alone_goes_out(protocol: Protocol) -> None:
    status = RunStatus("run-a", "failed", reason=Reason.TIMEOUT)
    body = json.loads(payload(status, None, protocol))
    assert set(body) == KEYS
    assert (body["reason"], body["output"], body["error"]) == ("timeout", None, None)
