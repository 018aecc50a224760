"""How a run's failure is told: remote exceptions as text, and the fixed labels metrics and
logs use (never a message's own text: label values stay bounded)."""

from __future__ import annotations

import traceback

from runnable_k8s.errors import (
    ConfigurationError,
    DisallowedObject,
    ForgedMessage,
    MessageExpired,
    MessageRejected,
    PayloadTooLarge,
)
from runnable_k8s.protocol.allowlist import import_object
from runnable_k8s.protocol.messages import Outcome, RemoteFailure
from runnable_k8s.protocol.reasons import Reason
from runnable_k8s.worker.metrics import RejectReason, RunOutcome


def describe(exc: BaseException, redact: tuple[str, ...]) -> RemoteFailure:
    """The exception as type name, message and traceback, with secret values removed (defence
    in depth: an exception message must not carry a key into Redis)."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    message, text = str(exc), "".join(traceback.format_exception(exc))
    for secret in redact:
        message = message.replace(secret, "[redacted]")
        text = text.replace(secret, "[redacted]")
    return RemoteFailure(name, message, text)


def exception_types(paths: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    """Resolve `RUNNABLE_K8S_RETRY_ON` import paths (at start-up: a typo fails loudly)."""
    types: list[type[BaseException]] = []
    for path in paths:
        obj = import_object(path)
        if not (isinstance(obj, type) and issubclass(obj, BaseException)):
            raise ConfigurationError(f"RUNNABLE_K8S_RETRY_ON: {path!r} is not an exception type")
        types.append(obj)
    return tuple(types)


def reject_reason(exc: MessageRejected) -> RejectReason:
    """The metric label of a refused message."""
    if isinstance(exc, PayloadTooLarge):
        return "too_large"
    if isinstance(exc, MessageExpired):
        return "expired"
    if isinstance(exc, DisallowedObject):
        return "disallowed"
    if isinstance(exc, ForgedMessage):
        return "bad_signature"
    return "malformed"


def outcome_label(outcome: Outcome) -> RunOutcome:
    if outcome.state == "failed" and outcome.cause is Reason.TIMEOUT:
        return "timeout"
    if outcome.state == "failed" and outcome.cause is Reason.REJECTED:
        return "rejected"
    if outcome.state in ("succeeded", "interrupted", "cancelled", "expired"):
        return outcome.state
    return "failed"


def short_reason(outcome: Outcome) -> str:
    # A rejection's text may quote the refused object: logs get its kind instead.
    if outcome.cause is Reason.REJECTED:
        return "disallowed"
    return outcome.reason or (outcome.error.type if outcome.error else "")
