"""The worker's Celery consumer: only our own task's messages, shaped as our producer writes
them, ever become Celery requests, and none once the worker is stopping.

Why here and not in our task: Celery's consumer turns a message into a request, and acts on
it, before any code of ours runs. Every Celery app registers built-in tasks (`celery.group`,
`celery.chain`, `celery.chord`, `celery.chord_unlock`, `celery.accumulate`,
`celery.backend_cleanup`, `celery.map`, `celery.starmap`, `celery.chunks`), whether or not the
banner lists them: a raw message naming `celery.group` made the worker publish the tasks it
listed onto any queue they named. A message naming our task is no safer as written by anyone
with access to Redis: Celery acts on its headers (`eta` and `expires` schedule or drop it,
`timelimit` stops it, `group` and `replaced_task_nesting` change what happens after) and on
its body's embed (`callbacks`, `errbacks`, `chain` and `chord` publish further tasks after the
run) without looking at our signature. So each message is checked against the one shape
`runnable_k8s.protocol.task_message.build` writes: our task name, the fixed headers and no
others, a task id equal to the run id its envelope claims, one string argument, no keyword
arguments, an empty embed. A message that differs is logged, counted as rejected,
acknowledged (it is never redelivered) and dropped. The envelope's signature is still checked
by the task, as before: this check only makes sure that nothing but that check runs first.

A stopping worker (SIGTERM: warm shutdown) finishes the runs it holds, but the fetch already
in flight when the signal lands still delivers a message. It is handed back to the queue at
once (for another worker, or this one's successor) instead of being started, or held
unacknowledged until the visibility timeout.

The consumer also owns readiness (`health.Readiness`): Celery calls `on_ready` each time the
consumer has subscribed to the queue (at start and after every reconnection), and `on_close`
or `stop` when it stops taking messages, which is exactly when the worker can and cannot take
a run. Celery's `worker_ready` signal fires once, so it would miss every reconnection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from celery.worker import state as worker_state
from celery.worker.consumer import Consumer

from runnable_k8s.protocol import envelope
from runnable_k8s.protocol.task_message import EMBED, FIXED_HEADERS, FREE_HEADERS, TASK_NAME
from runnable_k8s.worker.health import Readiness
from runnable_k8s.worker.logs import RunEvent, run_event
from runnable_k8s.worker.metrics import RejectReason, WorkerMetrics

log = logging.getLogger("runnable_k8s.worker")

# The fixed headers as they read back from JSON (tuples become lists).
_EXPECTED: Final[dict[str, object]] = json.loads(json.dumps(dict(FIXED_HEADERS)))
# kombu adds this header when it puts a message back (a redelivery); its value changes nothing.
_KOMBU_HEADERS: Final = frozenset({"redelivered"})
_ALLOWED: Final = frozenset(_EXPECTED) | FREE_HEADERS | _KOMBU_HEADERS
_REQUIRED: Final = frozenset(_EXPECTED) | FREE_HEADERS
# A run id is a uuid4 hex; anything near the (truncating) header peek's length is refused.
_MAX_ID: Final = 63
_SHOWN: Final = 80


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a message is not handed to Celery. `detail` is our own text (it quotes at most a
    few characters of the message, in repr form); `claimed` is the unproven run id."""

    reason: RejectReason
    detail: str
    claimed: str | None = None


def check(message: Any, max_bytes: int) -> Refusal | None:
    """Whether a kombu `message` is a run message as our producer writes it (None: it is).

    Args:
        message: the delivered kombu message (headers, properties, decoded body).
        max_bytes: the largest envelope accepted (the worker's limit on a run message).
    """
    headers = message.headers
    if not isinstance(headers, dict):
        return Refusal("malformed", "headers are not a mapping")
    task = headers.get("task")
    raw_id = headers.get("id")
    claimed = raw_id[:100] if isinstance(raw_id, str) else None
    if task != TASK_NAME:
        return Refusal("unknown_task", f"task {_show(task)} is not {TASK_NAME}", claimed)
    unexpected = sorted(str(key) for key in set(headers) - _ALLOWED)
    if unexpected:
        detail = f"headers our producer never sets: {_show(unexpected)}"
        return Refusal("malformed", detail, claimed)
    missing = sorted(_REQUIRED - set(headers))
    if missing:
        return Refusal("malformed", f"headers missing: {missing}", claimed)
    for key, value in _EXPECTED.items():
        if headers[key] != value or type(headers[key]) is not type(value):
            return Refusal("malformed", f"header {key} is not the producer's", claimed)
    if not isinstance(headers.get("redelivered", False), bool):
        return Refusal("malformed", "header redelivered is not a boolean", claimed)
    if not isinstance(raw_id, str) or not 0 < len(raw_id) <= _MAX_ID:
        return Refusal("malformed", "task id is not a run id", claimed)
    if headers["root_id"] != raw_id:
        return Refusal("malformed", "root_id is not the task id", claimed)
    if not isinstance(headers["argsrepr"], str) or not isinstance(headers["origin"], str):
        return Refusal("malformed", "argsrepr or origin is not a string", claimed)
    properties = message.properties if isinstance(message.properties, dict) else {}
    if properties.get("reply_to") is not None:
        return Refusal("malformed", "the message asks for a reply", claimed)
    if (message.content_type, message.content_encoding) != ("application/json", "utf-8"):
        return Refusal("malformed", "the body is not UTF-8 JSON", claimed)
    return _check_body(message.body, raw_id, max_bytes)


def _check_body(body: object, run_id: str, max_bytes: int) -> Refusal | None:
    if not isinstance(body, bytes | str):
        return Refusal("malformed", "the body is not text", run_id)
    # JSON escaping makes a body at most 6 times its envelope: bound the parse, not the run.
    if len(body) > 6 * max_bytes + 1024:
        return Refusal("too_large", f"message of {len(body)} bytes exceeds the size limit", run_id)
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return Refusal("malformed", "the body is not JSON", run_id)
    if not (isinstance(parsed, list) and len(parsed) == 3):
        return Refusal("malformed", "the body is not [args, kwargs, embed]", run_id)
    args, kwargs, embed = parsed
    if not (isinstance(args, list) and len(args) == 1 and isinstance(args[0], str)):
        return Refusal("malformed", "the task argument is not one envelope", run_id)
    if kwargs != {}:
        return Refusal("malformed", "the message carries keyword arguments", run_id)
    if embed != dict(EMBED):
        # callbacks, errbacks, chain or chord: tasks Celery would publish after the run.
        return Refusal("malformed", "the message links other tasks (embed)", run_id)
    wire = args[0].encode(errors="replace")
    if len(wire) > max_bytes:
        return Refusal("too_large", f"message of {len(wire)} bytes exceeds the size limit", run_id)
    header = envelope.peek_header(wire)
    if header is None:
        return Refusal("malformed", "malformed envelope (no readable header)", run_id)
    if header.kind != envelope.RUN or header.run_id != run_id:
        return Refusal("malformed", "the task id disagrees with the envelope's run id", run_id)
    return None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _stopping() -> bool:
    # Celery sets these to an exit code, and EX_OK is 0: "set" is "neither None nor False".
    return any(
        flag is not None and flag is not False
        for flag in (worker_state.should_stop, worker_state.should_terminate)
    )


def guarded_consumer(
    metrics: WorkerMetrics, max_bytes: int, readiness: Readiness | None = None
) -> type[Consumer]:
    """Celery's consumer with `check` (and the hand-back on shutdown) in front of the step
    that turns messages into requests, which keeps `readiness` while it consumes. Set as the
    app's `worker_consumer`."""

    def refuse(message: Any, refusal: Refusal, errors: tuple[type[BaseException], ...]) -> None:
        metrics.reject(refusal.reason)
        run_event(
            log,
            logging.WARNING,
            RunEvent("rejected", refusal.claimed, reason=refusal.reason),
            "rejected message claimed_run=%s reason=%s",
            refusal.claimed or "?",
            refusal.detail,
        )
        # Acknowledged, not requeued: a message refused once is refused every time.
        message.ack_log_error(log, errors)

    def hand_back(message: Any, errors: tuple[type[BaseException], ...]) -> None:
        run_id = message.headers.get("id")
        log.info("handed back run=%s: this worker is shutting down", str(run_id)[:100])
        message.reject_log_error(log, errors, requeue=True)

    class GuardedConsumer(Consumer):  # type: ignore[misc]
        def on_ready(self) -> None:
            # After `consume()`: BRPOP on the queue's lists is what the next loop turn sends.
            super().on_ready()
            if readiness is not None and not _stopping():
                readiness.consuming()

        def on_close(self) -> None:
            # Before a reconnection (a lost connection) and at the start of a stop.
            if readiness is not None:
                readiness.stopped()
            super().on_close()

        def stop(self) -> None:
            # Also a consumer stopped before it ever connected, for which Celery skips on_close.
            if readiness is not None:
                readiness.stopped()
            super().stop()

        def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], None]:
            deliver: Callable[[Any], None] = super().create_task_handler(*args, **kwargs)
            errors = tuple(self.connection_errors)

            def on_task_received(message: Any) -> None:
                try:
                    refusal = check(message, max_bytes)
                except Exception as exc:  # an exception here would restart the consumer
                    refusal = Refusal("malformed", f"unreadable message ({type(exc).__name__})")
                if refusal is not None:
                    refuse(message, refusal, errors)
                elif _stopping():
                    hand_back(message, errors)
                else:
                    deliver(message)

            return on_task_received

    return GuardedConsumer
