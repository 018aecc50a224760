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
from runnable_k8s.protocol.batch import ItemFailed, decode_items
from runnable_k8s.protocol.messages import COMPLETED_STATES, Outcome, Protocol
from runnable_k8s.protocol.reasons import Reason


def error_for(outcome: Outcome) -> RunError:
    """The exception a caller sees for an outcome that is not a success."""
    run_id = outcome.run_id
    if outcome.state == "cancelled":
        return RunCancelled(f"run {run_id} was cancelled", run_id=run_id)
    if outcome.state == "expired":
        return RunExpired(
            f"run {run_id} waited in the queue past its expiry and was not run", run_id=run_id
        )
    cause = outcome.cause
    if cause is Reason.TIMEOUT:
        return ExecutionTimeout(
            f"run {run_id} exceeded the worker's time limit and was cancelled", run_id=run_id
        )
    if cause is Reason.UNVERIFIED:
        if rejection.label_of(outcome.reason) == "bad_signature":
            return SigningKeyMismatch(f"run {run_id}: {outcome.reason}", run_id=run_id)
        return RunRejected(f"run {run_id}: {outcome.reason}", run_id=run_id)
    if cause is Reason.REJECTED:
        return RunRejected(f"worker refused run {run_id}: {outcome.reason}", run_id=run_id)
    if cause is Reason.INTERRUPTED:
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
    try:
        items = decode_items(protocol.data.decode_data(outcome.output), count)
    except SignatureRejected as exc:
        raise SignatureRejected(f"run {outcome.run_id}: {exc}") from exc
    return [
        RemoteError(
            item.failure.type, item.failure.message, item.failure.traceback, run_id=outcome.run_id
        )
        if isinstance(item, ItemFailed)
        else item
        for item in items
    ]
