"""Turn a verified outcome into the value the caller asked for, or the matching error."""

from __future__ import annotations

from typing import Any

from runnable_k8s.errors import (
    ExecutionTimeout,
    RemoteError,
    RunCancelled,
    RunError,
    RunExpired,
    RunRejected,
    SignatureRejected,
    SigningKeyMismatch,
)
from runnable_k8s.protocol import rejection
from runnable_k8s.protocol.messages import COMPLETED_STATES, Outcome, Protocol


def error_for(outcome: Outcome) -> RunError:
    """The exception a caller sees for an outcome that is not a success."""
    run_id = outcome.run_id
    if outcome.state == "cancelled":
        return RunCancelled(f"run {run_id} was cancelled", run_id=run_id)
    if outcome.state == "expired":
        return RunExpired(
            f"run {run_id} waited in the queue past its expiry and was not run", run_id=run_id
        )
    if outcome.reason == "timeout":
        return ExecutionTimeout(
            f"run {run_id} exceeded the worker's time limit and was cancelled", run_id=run_id
        )
    label = rejection.label_of(outcome.reason)
    if label == "bad_signature":
        return SigningKeyMismatch(f"run {run_id}: {outcome.reason}", run_id=run_id)
    if label is not None:
        return RunRejected(f"run {run_id}: {outcome.reason}", run_id=run_id)
    if outcome.reason.startswith("rejected"):
        return RunRejected(f"worker refused run {run_id}: {outcome.reason}", run_id=run_id)
    if outcome.reason == "interrupted":
        # Its worker was lost mid-stream; a stream cannot start over without repeating chunks.
        return RemoteError(
            "RemoteError",
            f"interrupted: the worker streaming run {run_id} was lost after "
            f"{outcome.chunks} entries; submit it again",
            "",
            run_id=run_id,
        )
    failure = outcome.error
    if failure is None:
        return RemoteError("RemoteError", outcome.reason or "unknown failure", "", run_id=run_id)
    return RemoteError(failure.type, failure.message, failure.traceback, run_id=run_id)


def unwrap(protocol: Protocol, outcome: Outcome) -> Any:
    """The output of a single run (an interrupted graph's included), or raise its error."""
    if outcome.state not in COMPLETED_STATES:
        raise error_for(outcome)
    return protocol.data.decode_data(outcome.output)


def unwrap_items(protocol: Protocol, outcome: Outcome, count: int) -> list[Any]:
    """Per-input outputs (or exceptions, in place) of a batch run."""
    if outcome.state not in COMPLETED_STATES:
        error = error_for(outcome)
        return [error] * count
    items = protocol.data.decode_data(outcome.output)
    if not isinstance(items, list) or len(items) != count:
        raise SignatureRejected(f"batch run {outcome.run_id} returned a malformed item list")
    results: list[Any] = []
    for item in items:
        if isinstance(item, dict) and item.get("ok") is True:
            results.append(item.get("v"))
        elif isinstance(item, dict) and isinstance(item.get("e"), dict):
            err = item["e"]
            results.append(
                RemoteError(
                    str(err.get("type", "")),
                    str(err.get("message", "")),
                    str(err.get("traceback", "")),
                    run_id=outcome.run_id,
                )
            )
        else:
            raise SignatureRejected(f"batch run {outcome.run_id} returned a malformed item")
    return results
