"""What one delivery came to, and how it shows as the state of its Celery task.

The run's outcome lives in its own signed records; Celery only sees whether the task raised.
A task that never raised showed every run as SUCCESS in Flower, failed and refused ones too.
So `Executor.handle` says what the delivery came to and the task raises `RunNotSucceeded`
for everything but success. The task declares it in `throws`: Celery then logs it as one
INFO line without a traceback (the run's own log line already told the failure), and with
`task_acks_late` and `task_acks_on_failure_or_timeout` the message is acknowledged exactly as
after a success, so nothing is redelivered and the outcome stays recorded once. The text
carries fixed labels only (outcome, remote error type, reject reason): never inputs, outputs
or exception messages, which Celery puts in its events and Flower shows to anyone watching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from runnable_k8s.errors import RunNotSucceeded
from runnable_k8s.protocol.messages import Outcome, RunStatus
from runnable_k8s.worker.failures import outcome_label, short_reason
from runnable_k8s.worker.metrics import RunOutcome

Delivered = RunOutcome | Literal["refused"]
"""A run's outcome (recorded by this delivery or, for a replay or a duplicate delivery, by an
earlier one), or "refused": the message did not verify and was not used."""


@dataclass(frozen=True, slots=True)
class Handled:
    """`run_id` (unproven when refused), what the delivery came to, and a fixed label: the
    remote error type of a failed run, the reason of a refusal or a rejection."""

    run_id: str | None
    outcome: Delivered
    detail: str = ""


def already_ended(status: RunStatus) -> Handled:
    """A delivery of a run that had already ended (a replay, or a duplicate delivery that
    waited for its holder) repeats the run's recorded outcome: Flower keeps one state per task
    id, the run id, and this delivery's state replaces the earlier one's."""
    recorded = Outcome(status.run_id, status.state, reason=status.reason)
    return Handled(status.run_id, outcome_label(recorded), short_reason(recorded))


def failure(handled: Handled) -> RunNotSucceeded | None:
    """The exception the Celery task raises for `handled` (None: the run succeeded)."""
    if handled.outcome in ("succeeded", "interrupted"):
        # An interrupted graph ran as designed and returned its output: it waits for a human,
        # not for a fix. Celery has no state for that (a custom state would be replaced by
        # SUCCESS or FAILURE when the task returns), and FAILURE would count it with the
        # errors in Flower and in alerts on task failures, so its task is a SUCCESS; the
        # run's own status says "interrupted".
        return None
    if handled.outcome == "refused":
        text = f"claimed_run={handled.run_id or '?'} outcome=refused"
    else:
        text = f"run={handled.run_id} outcome={handled.outcome}"
    if handled.detail and handled.detail != handled.outcome:
        label = "error" if handled.outcome == "failed" else "reason"
        text += f" {label}={handled.detail[:200]}"
    return RunNotSucceeded(text, run_id=handled.run_id)
