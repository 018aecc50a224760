"""The one error tree of runnable-k8s. Everything the library raises derives from
`RunnableK8sError`, so `except RunnableK8sError` catches all of it and nothing else."""

from __future__ import annotations


class RunnableK8sError(Exception):
    """Root of every error raised by runnable-k8s."""


class ConfigurationError(RunnableK8sError):
    """Settings are missing, malformed or contradict each other."""


class SerializationRefused(RunnableK8sError):
    """A runnable, input or output cannot travel as signed JSON.

    For a runnable or an input: raised on the producer before anything is enqueued. For an
    output or a stream chunk: raised on the worker, and the caller gets it as a `RemoteError`.
    The message names the offending object and gives advice that fits what was refused.
    """


class MessageRejected(RunnableK8sError):
    """A message read from Redis failed verification and was not used."""


class SignatureRejected(MessageRejected):
    """A message is unsigned, malformed, or its HMAC does not match (tampered or forged)."""


class ForgedMessage(SignatureRejected):
    """A message's HMAC does not match (forged, tampered with, or signed with another key), or
    a genuine message was moved where it does not belong: read as another kind of message, or
    under another run's id."""


class PayloadTooLarge(MessageRejected):
    """A body exceeds `RUNNABLE_K8S_MAX_BODY_BYTES` (checked before parsing)."""


class DisallowedObject(MessageRejected):
    """A payload names a class outside the allowlist, or constructor arguments that could
    redirect a model (base URL, headers, proxy, client) or run template code."""


class MessageExpired(MessageRejected):
    """A signed message is past its expiry time."""


class BrokerError(RunnableK8sError):
    """Redis failed a command: unreachable (`BrokerUnavailable`), or it answered with an error
    (e.g. a key of the wrong type: someone else's data at our key names)."""


class BrokerUnavailable(BrokerError):
    """Redis could not be reached; nothing was enqueued by the failing call."""


class SentinelUnavailable(BrokerUnavailable):
    """No sentinel of a `sentinel://` URL could be reached, or none named a master for its
    `master_name` (a wrong name, or a failover still under way)."""


class NotReplicated(BrokerError):
    """Redis took a write, but fewer replicas than `RUNNABLE_K8S_REPLICA_ACKS` acknowledged it
    within `RUNNABLE_K8S_FAILOVER_WAIT`: it holds on the master, and a failover now could lose
    it. The run may still run; its handle can be awaited."""


class RunError(RunnableK8sError):
    """Base of errors about one run. `run_id` names it."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class RemoteError(RunError):
    """The runnable raised on the worker.

    Attributes:
        remote_type: qualified name of the remote exception type, e.g. `openai.RateLimitError`.
        remote_message: `str()` of the remote exception.
        remote_traceback: the formatted remote traceback.
    """

    def __init__(
        self,
        remote_type: str,
        remote_message: str,
        remote_traceback: str,
        *,
        run_id: str | None = None,
    ) -> None:
        super().__init__(f"{remote_type}: {remote_message}", run_id=run_id)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return (
            f"{self.remote_type}: {self.remote_message}\n\nRemote traceback "
            f"(run {self.run_id}):\n{self.remote_traceback}"
        )


class RunRejected(RunError):
    """The worker refused the run (e.g. a class outside its allowlist); it did not execute."""


class SigningKeyMismatch(SignatureRejected, RunError):
    """A worker could not verify this run, whose message it read exactly as the producer
    signed it: the producer's and the worker's signing keys (`RUNNABLE_K8S_SIGNING_KEY`)
    probably differ. Nothing ran; the run is recorded as failed."""


class WaitTimeout(RunError):
    """The caller stopped waiting; the run may still finish, and its handle can be awaited."""


class ExecutionTimeout(RunError):
    """The run exceeded the worker's time limit and was cancelled there."""


class RunCancelled(RunError):
    """The run was cancelled before or while it ran."""


class RunExpired(RunError):
    """The run waited in the queue past its expiry and was discarded without running."""


class RunNotFound(RunError):
    """No run with this id is known (never submitted, or its record expired)."""


class UnknownEventId(RunError):
    """`after=` (a stream resume point) is not an event id of the run's stream: not a
    non-negative integer, or beyond the end of the stream once the run has ended."""


class RunNotSucceeded(RunError):
    """Raised by the worker's Celery task when a delivery did not end in success (the run
    failed, timed out, was cancelled, expired or refused), so Celery's events, Flower and
    `celery inspect` report FAILURE instead of SUCCESS. Its text names only the run, the
    outcome and the remote error type or refusal reason. Callers never see it: they get the
    run's own error (`RemoteError`, `ExecutionTimeout`, ...)."""


class ThreadBusy(RunError):
    """`multitask_strategy="reject"`: another run of the same `configurable.thread_id` was
    queued or running, so this one was refused at submission and nothing was enqueued.
    `active_run_id` names the run that holds the thread."""

    def __init__(self, message: str, *, run_id: str | None = None, active_run_id: str = "") -> None:
        super().__init__(message, run_id=run_id)
        self.active_run_id = active_run_id


class UnknownMultitaskStrategy(ConfigurationError):
    """A `multitask_strategy` other than "enqueue", "reject", "interrupt" or "rollback"."""


class UnknownPriority(ConfigurationError):
    """A priority other than "high", "normal" or "low" was asked for (refused at submit,
    before anything is enqueued)."""


class WebhookRefused(ConfigurationError):
    """A completion webhook URL is not allowed: not an http(s) URL, or outside the allowlist
    of prefixes (`RUNNABLE_K8S_WEBHOOK_ALLOW`). Refused at submit, before anything is
    enqueued; a worker refuses it too, and records why on the run."""
