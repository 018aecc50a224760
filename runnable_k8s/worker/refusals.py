"""Deliveries that do not run: a message that failed verification, and a verified run that is
not executed (a replay, a duplicate delivery, an expired run).

A message that fails verification is logged and dropped without touching any run's signed
records (its run id is unproven): the claimed run only gets an unsigned notice its producer
checks for itself (protocol/rejection.py). The one exception is a delivery of a run that has
ended, whose large body its finish dropped: it repeats the run's recorded outcome.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from typing import Final

import redis.asyncio as aredis
from redis.exceptions import ResponseError

from runnable_k8s.errors import MessageRejected
from runnable_k8s.protocol import envelope, rejection
from runnable_k8s.protocol.messages import RunRequest, RunStatus
from runnable_k8s.store import keys
from runnable_k8s.store.records import RunRecords
from runnable_k8s.worker.failures import reject_reason
from runnable_k8s.worker.logs import RunEvent, run_event
from runnable_k8s.worker.metrics import RejectReason, WorkerMetrics
from runnable_k8s.worker.outage import REDIS_ERRORS
from runnable_k8s.worker.task_state import Handled, already_ended

log = logging.getLogger("runnable_k8s.worker")

# What a run id can look like (producers make 32 hex digits): a claimed id of any other shape
# gets no rejection notice, so hostile ids cannot name other keys.
_RUN_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


class NotRead:
    """`Executor.handle`'s default: the body beside the message was not read by the caller."""


NOT_READ: Final = NotRead()


def body_key(raw: bytes) -> str | None:
    """The key of the body this (unverified) message says travels beside it, if any."""
    if not envelope.needs_body_beside(raw):
        return None
    header = envelope.peek_header(raw)
    return None if header is None else keys.body(header.run_id)


class Refusals:
    """Logs, counts and answers deliveries that do not run."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        client: Callable[[], aredis.Redis],
        records: Callable[[], RunRecords],
    ) -> None:
        self._metrics = metrics
        self._client = client
        self._records = records

    async def unverified(
        self, raw: bytes, beside: bytes | NotRead | None, exc: MessageRejected
    ) -> Handled:
        """A message that failed verification (`exc`)."""
        ended = await self._ended_without_body(raw, beside)
        return ended if ended is not None else await self._reject(raw, beside, exc)

    async def _ended_without_body(
        self, raw: bytes, beside: bytes | NotRead | None
    ) -> Handled | None:
        """A delivery of a run that has ended, whose large body (beside the message) its
        finish dropped: it cannot be verified any more, but it is a replay or a redelivery
        (after a lost acknowledgement), not a forgery, and repeats the recorded outcome as a
        verified one would. None when that is not the case. Trusting the claimed id is safe:
        the outcome repeated is the run's own, signed, and nothing runs."""
        if not envelope.needs_body_beside(raw) or isinstance(beside, bytes):
            return None
        header = envelope.peek_header(raw)
        if header is None or not _RUN_ID.fullmatch(header.run_id):
            return None
        run_id = header.run_id
        try:
            if isinstance(beside, NotRead) and await self._client().exists(keys.body(run_id)):
                return None  # the body is there: the message itself failed verification
            status = (await self._records().read(run_id)).status
        except ResponseError:
            return None
        if status is None or not status.done:
            return None
        self._metrics.reject("replay")
        run_event(
            log,
            logging.WARNING,
            RunEvent("rejected", run_id, status.name, reason="replay"),
            "ignored delivery of finished run run=%s state=%s (replay or duplicate; its body "
            "was dropped when it finished)",
            run_id,
            status.state,
        )
        return already_ended(status)

    async def _reject(
        self, raw: bytes, beside: bytes | NotRead | None, exc: MessageRejected
    ) -> Handled:
        reason = reject_reason(exc)
        self._metrics.reject(reason)
        header = envelope.peek_header(raw)
        # Unverified: the id is only what the message claims, cut short.
        claimed = header.run_id[:100] if header else None
        run_event(
            log,
            logging.WARNING,
            RunEvent("rejected", claimed, reason=reason),
            "rejected message claimed_run=%s reason=%s",
            claimed or "?",
            exc,
        )
        if claimed is None or not _RUN_ID.fullmatch(claimed) or reason not in rejection.REASONS:
            return Handled(claimed, "refused", reason)
        # Tell the producer what exactly could not be verified, and stop rescuing the run if
        # these are its stored bytes (protocol/rejection.py says why neither is a risk).
        try:
            body = None
            if envelope.needs_body_beside(raw):
                if isinstance(beside, NotRead):
                    with contextlib.suppress(ResponseError):  # another type: no body
                        stored = await self._client().get(keys.body(claimed))
                        beside = stored if isinstance(stored, bytes) else None
                body = beside if isinstance(beside, bytes) else None
            if await self._records().note_rejection(claimed, raw, body, reason):
                log.warning(
                    "run=%s is no longer pending rescue: its stored message failed verification",
                    claimed,
                )
        except (ResponseError, *REDIS_ERRORS) as exc_:
            # The rescue sweep brings the message back, and its next rejection tells again.
            log.warning("could not leave a rejection notice for run=%s: %s", claimed, exc_)
        return Handled(claimed, "refused", reason)

    def refuse(
        self, request: RunRequest, reason: RejectReason, message: str, *args: object
    ) -> None:
        """Log and count a verified run that is not executed (replay, duplicate, expired);
        `message` takes the run id first, then `args`."""
        self._metrics.reject(reason)
        run_event(
            log,
            logging.INFO if reason == "expired" else logging.WARNING,
            RunEvent("rejected", request.run_id, request.name, reason=reason),
            message,
            request.run_id,
            *args,
        )

    def finished(self, request: RunRequest, status: RunStatus, *, duplicate: bool) -> None:
        """A verified delivery of a run that has ended (`duplicate`: one that waited for the
        holder of its lease, which recorded the outcome meanwhile)."""
        if duplicate:
            self.refuse(
                request,
                "duplicate",
                "ignored duplicate delivery of run=%s (finished by its holder)",
            )
        else:
            self.refuse(
                request,
                "replay",
                "ignored delivery of finished run run=%s state=%s (replay or duplicate)",
                status.state,
            )
