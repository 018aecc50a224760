"""Worker logging: one line per run event, as text or (`RUNNABLE_K8S_LOG_JSON`) one JSON object
per line, Celery's own lines included.

A run event carries its fields beside the human-readable message (`run_event`). The JSON
formatter writes a fixed set of keys and nothing else from the record, so an `extra` a library
attaches (Celery passes task arguments that way) never reaches the output. Payloads are never
logged; as a second line of defence every handler also redacts the signing key and the values
of secret-looking environment variables, in both formats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from celery import Celery, signals

from runnable_k8s.settings import Settings

_FIELDS: Final = "runnable_k8s_event"
MAX_NAME_LENGTH: Final = 200


@dataclass(frozen=True, slots=True)
class RunEvent:
    """The structured part of a run's log line."""

    event: str
    run_id: str | None = None
    name: str | None = None
    attempt: int | None = None
    duration: float | None = None
    outcome: str | None = None
    reason: str | None = None


def run_event(
    logger: logging.Logger, level: int, fields: RunEvent, message: str, *args: object
) -> None:
    """Log `message % args` with `fields` attached (written as keys in JSON mode).

    On an event loop the record is made now (its time is the event's) and handed to the
    handlers at the loop's next turn: a run's "received" line is then formatted, redacted and
    written while its claim is in flight, not before the claim is sent (about 0.1 ms of a
    run's path, measured by `python -m benchmarks.stages`). Lines keep their order: the
    loop runs its callbacks first in, first out."""
    if not logger.isEnabledFor(level):
        return
    path, line, function, _ = logger.findCaller()
    record = logger.makeRecord(
        logger.name, level, path, line, message, args, None, function, {_FIELDS: fields}
    )
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # a thread of Celery's: at once
        logger.handle(record)
        return
    loop.call_soon(logger.handle, record)


def forged(what: str, run_id: str, exc: Exception) -> None:
    """A record of a run (status, cancellation, ...) failed verification and was ignored."""
    logging.getLogger("runnable_k8s.worker").warning(
        "ignored unverifiable %s run=%s reason=%s", what, run_id, exc
    )


class JsonFormatter(logging.Formatter):
    """ts, level, event, run_id, name, attempt, duration, outcome, reason, worker, logger,
    message (and exc for a traceback): always these keys, null when not applicable."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, _FIELDS, None)
        if not isinstance(fields, RunEvent):
            fields = RunEvent(event="log")
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "event": fields.event,
            "run_id": fields.run_id,
            "name": fields.name[:MAX_NAME_LENGTH] if fields.name is not None else None,
            "attempt": fields.attempt,
            "duration": round(fields.duration, 6) if fields.duration is not None else None,
            "outcome": fields.outcome,
            "reason": fields.reason,
            "worker": self._worker,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class Redact(logging.Filter):
    """Replaces secret values in a record's final message and traceback text."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = self._scrub(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info:
            record.exc_text = self._scrub(
                record.exc_text or logging.Formatter().formatException(record.exc_info)
            )
        return True

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text


class _DropPoolApply(logging.Filter):
    # Celery's DEBUG "TaskPool: Apply" line prints the task's arguments: the whole envelope.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("TaskPool: Apply")


def install(settings: Settings, worker: str) -> None:
    """Hook Celery's logging set-up (it installs its handlers when the worker starts) so every
    handler redacts secrets and, with `log_json`, writes JSON lines."""
    key = settings.signing_key.reveal().decode(errors="replace") if settings.signing_key else ""
    redact = Redact((key, *settings.redact_values))
    formatter = JsonFormatter(worker) if settings.log_json else None

    def adopt(logger: logging.Logger, **_: Any) -> None:
        for handler in logger.handlers:
            if redact not in handler.filters:
                handler.addFilter(redact)
            if formatter is not None:
                handler.setFormatter(formatter)

    signals.after_setup_logger.connect(adopt, weak=False, dispatch_uid="runnable_k8s.logs")
    signals.after_setup_task_logger.connect(adopt, weak=False, dispatch_uid="runnable_k8s.tlogs")
    logging.getLogger("celery.pool").addFilter(_DropPoolApply())
    # Celery's "Task ... received" INFO line says what our own "received" line says (the
    # run id; the mode and name are ours only), from the consumer thread, before the run is
    # handed on: formatting and writing it was about 0.1 ms of every run's path. Its later
    # lines ("succeeded", "raised expected") stay: they tell the task's state as Celery saw it.
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
    if settings.log_json:
        # Python warnings would otherwise go to stderr as plain text.
        logging.captureWarnings(True)


def after_setup(app: Celery, start: Callable[[], None]) -> None:
    """Call `start` in `app`'s worker once Celery has set up logging, before its consumer
    takes a message.

    Celery configures its handlers inside `worker_main` (the worker's init); until then a
    `runnable_k8s` INFO line finds no handler and is dropped, and a WARNING reaches stderr
    through Python's last-resort handler, neither redacted nor JSON. `celeryd_after_setup`
    comes after that set-up and before the consumer starts (Celery's `Worker.on_start`).
    """

    def started(instance: Any = None, **_: Any) -> None:
        # Celery's signals are process-wide: answer only this app's worker.
        if getattr(instance, "app", None) is app:
            start()

    signals.celeryd_after_setup.connect(started, weak=False)
