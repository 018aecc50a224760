"""What a worker does with one message, top to bottom: verify, claim, start, record.

The path of one run reads in three files: this one (`handle` -> `_execute` -> `_run_started`
-> the outcome recorded), worker/attempts.py (the time limit and retries around the call) and
worker/dispatch.py (load the runnable, then invoke, batch, stream or a graph's state API).
Deliveries that do not run leave the path for worker/refusals.py.

Everything read from Redis is hostile until its signature checks out, and even then it only
builds allowlisted classes. A message that fails verification is logged and dropped without
touching any run's signed records (its run id is unproven): the claimed run only gets an
unsigned notice its producer checks for itself (protocol/rejection.py); every other path ends
with exactly one signed outcome in the run's event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aredis
from redis.exceptions import ResponseError

from runnable_k8s.errors import (
    MessageRejected,
    PayloadTooLarge,
)
from runnable_k8s.protocol.messages import Outcome, Protocol, RunRequest, RunStatus
from runnable_k8s.protocol.reasons import Reason
from runnable_k8s.settings import Settings
from runnable_k8s.store.records import RunRecords
from runnable_k8s.worker import inline_parsers
from runnable_k8s.worker.attempts import Attempts, Live
from runnable_k8s.worker.cancellation import Cancellations
from runnable_k8s.worker.claims import POLL as CLAIM_POLL
from runnable_k8s.worker.claims import LeaseKeeper
from runnable_k8s.worker.clients import WorkerRedis
from runnable_k8s.worker.dispatch import Dispatcher
from runnable_k8s.worker.failures import (
    describe,
    outcome_label,
    short_reason,
)
from runnable_k8s.worker.flow import FlowControl
from runnable_k8s.worker.logs import RunEvent, forged, run_event
from runnable_k8s.worker.metrics import WorkerMetrics
from runnable_k8s.worker.outage import REDIS_ERRORS, ride_out
from runnable_k8s.worker.refusals import NOT_READ, NotRead, Refusals, body_key
from runnable_k8s.worker.registry import Registry, RunnableSource
from runnable_k8s.worker.stream_writer import Progress
from runnable_k8s.worker.task_state import Handled, already_ended
from runnable_k8s.worker.thread_runs import ThreadRuns
from runnable_k8s.worker.waits import WaitRecords

log = logging.getLogger("runnable_k8s.worker")

T = TypeVar("T")


class Executor:
    """Runs verified requests on the worker's event loop. One per worker process."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        inline_parsers.install()  # a small chain's parser without a thread hop
        self.protocol = Protocol(settings)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.clients = WorkerRedis(settings)
        self._records: RunRecords | None = None
        self._leases: LeaseKeeper | None = None
        self._thread_runs: ThreadRuns | None = None
        self.cancellations = Cancellations(lambda: self.redis, self.protocol, lambda: self.records)
        # Called with the run id once a run with a webhook has its outcome (worker/webhooks.py).
        self.on_ended: Callable[[str], Awaitable[None]] | None = None
        waits = WaitRecords(lambda: self.redis, self.protocol.signer, settings.result_ttl)
        self.flow = FlowControl(settings, lambda: self.redis, self.metrics, waits)
        self.refusals = Refusals(self.metrics, lambda: self.redis, lambda: self.records)
        self.runnables = RunnableSource(
            self.protocol, Registry(settings.allowed_refs), self.metrics, self.flow.attach
        )
        self.attempts = Attempts(
            settings,
            self.metrics,
            lambda: self.records,
            self.cancellations,
            Dispatcher(self, self.runnables, self.flow),
        )

    @property
    def redis(self) -> aredis.Redis:
        return self.clients.redis

    @property
    def leases(self) -> LeaseKeeper:
        if self._leases is None:
            self._leases = LeaseKeeper(
                self.redis,
                lease=self.settings.lease,
                on_cancel_record=self.cancellations.found_record,
            )
        return self._leases

    @property
    def thread_runs(self) -> ThreadRuns:
        if self._thread_runs is None:
            self._thread_runs = ThreadRuns(self.redis, self.settings, self.protocol, self.runnables)
        return self._thread_runs

    @property
    def records(self) -> RunRecords:
        if self._records is None:
            self._records = RunRecords(
                self.redis,
                self.protocol,
                ttl=int(self.settings.result_ttl),
                queue=self.settings.queue,
                on_forged=forged,
                dead_letter_ttl=int(self.settings.dead_letter_ttl),
            )
        return self._records

    # -- entry point ------------------------------------------------------------------------

    def fetch_beside(self, wire: str) -> bytes | None:
        """The large body a message says travels beside it (None: no such body, or none
        stored), read by the calling Celery pool thread with a blocking client before the run
        reaches the event loop: a blocking read of 1 MB costs about half what the event
        loop's stream reader does, and the pool thread would only wait otherwise. Nothing is
        trusted here; `handle` verifies the body with its message."""
        key = body_key(wire.encode() if isinstance(wire, str) else b"")
        if key is None:
            return None
        try:
            stored = self.clients.sync.get(key)
        except ResponseError:  # a key of another type where the body belongs: no body
            return None
        return stored if isinstance(stored, bytes) else None

    async def handle(self, wire: str, beside: bytes | NotRead | None = NOT_READ) -> Handled:
        """Handle one Celery message's argument and say what it came to (for the Celery
        task's state). Never raises for bad input. `beside` is what `fetch_beside` read
        (None: nothing); left out, it is read here."""
        raw = wire.encode() if isinstance(wire, str) else b""
        try:
            request = await self._verify(raw, beside)
        except MessageRejected as exc:
            return await self.refusals.unverified(raw, beside, exc)
        _event(
            logging.INFO,
            RunEvent("received", request.run_id, request.name),
            "received run=%s name=%s mode=%s",
            request.run_id,
            request.name,
            request.mode,
        )
        # Runs on a LangGraph thread take turns (worker/thread_runs.py).
        return await self.thread_runs.run(request, self._execute)

    async def _verify(self, raw: bytes, beside: bytes | NotRead | None) -> RunRequest:
        if len(raw) > self.protocol.signer.max_body_bytes + 1024:
            raise PayloadTooLarge(f"message of {len(raw)} bytes exceeds the size limit")
        if isinstance(beside, NotRead):
            beside = None
            key = body_key(raw)
            if key is not None:
                with contextlib.suppress(ResponseError):  # a key of another type: no body
                    stored = await self.redis.get(key)
                    beside = stored if isinstance(stored, bytes) else None
        # Expiry is checked after verification, so an authentic expired run is recorded.
        return self.protocol.open_request(raw, beside=beside, check_expiry=False)

    # -- one verified run -------------------------------------------------------------------

    async def _execute(self, request: RunRequest) -> Handled:
        run_id = request.run_id
        # The usual first delivery finds the producer's "queued" record, which the request
        # names by digest: the claim needs no read first. Anything else reads, then claims.
        base = RunStatus(run_id, "queued", request.name, 0, created_at=request.created_at)
        expected = request.queued_digest
        waiting = ignore_cancel = False
        owner = f"{self.worker_id}:{uuid.uuid4().hex[:12]}"  # this delivery's claim
        changes = 0
        while True:
            if expected is None or time.time() > request.expires_at:
                seen = await self.records.read(run_id)
                if seen.status is not None and seen.status.done:
                    self.refusals.finished(request, seen.status, duplicate=waiting)
                    return already_ended(seen.status)
                base, expected = seen.status or base, seen.digest
            running = None if time.time() > request.expires_at else _running(request, base)
            verdict, written = await self.records.claim(
                run_id,
                expected,
                running,
                owner=owner,
                lease=self.settings.lease,
                ignore_cancel=ignore_cancel,
                queued=expected == request.queued_digest,
            )
            if verdict == "ok" or (
                verdict == "cancelled" and (await self.records.read(run_id)).cancel_requested
            ):
                break
            if verdict == "cancelled":  # a forged record: Redis cannot check signatures
                ignore_cancel = True
                continue
            if verdict == "locked" and not waiting:
                log.warning("duplicate delivery of running run=%s: waiting for its holder", run_id)
                waiting = True
            if verdict == "locked":
                await asyncio.sleep(CLAIM_POLL)
            elif verdict == "changed":
                # Someone keeps rewriting the record: back off instead of spinning.
                changes += 1
                if changes > 3:
                    await asyncio.sleep(min(1.0, 0.01 * 2**changes))
            expected = None
        async with self.leases.holding(run_id, owner):
            if verdict == "cancelled":
                await self._end_unstarted(
                    request, owner, base, expected, Outcome(run_id, "cancelled")
                )
                _event(
                    logging.INFO,
                    RunEvent("finished", run_id, request.name, outcome="cancelled"),
                    "cancelled before start run=%s",
                    run_id,
                )
                return Handled(run_id, "cancelled")
            elif running is None or written is None:
                self.refusals.refuse(request, "expired", "expired run=%s name=%s", request.name)
                await self._end_unstarted(
                    request,
                    owner,
                    base,
                    expected,
                    Outcome(run_id, "expired", reason=Reason.EXPIRED),
                )
                return Handled(run_id, "expired")
            return await self._run_started(request, Live(running, written, owner))

    async def _durably(
        self, request: RunRequest, record: Callable[[], Awaitable[T]], what: str = "recording"
    ) -> T:
        """Write a run's record even across a Redis outage (an outcome: the run is done, and
        its message is acknowledged only after this returns). Retries until Redis answers
        again, for at most the visibility timeout (after which the message is delivered again
        anyway). `record` must be safe to repeat."""
        return await ride_out(
            record,
            within=self.settings.effective_visibility_timeout,
            what=what,
            run_id=request.run_id,
        )

    async def _end_unstarted(
        self, request: RunRequest, owner: str, base: RunStatus, expected: str, outcome: Outcome
    ) -> None:
        """Record the outcome of a run that never started (cancelled while queued, expired)."""
        status = RunStatus(
            request.run_id,
            outcome.state,
            request.name,
            base.attempt,
            created_at=base.created_at,
            finished_at=time.time(),
            reason=outcome.reason or outcome.state,
        )
        if await self._durably(
            request, lambda: self.records.finish(expected, status, outcome, owner=owner)
        ):
            self.metrics.finished(request.name, outcome_label(outcome), None)
        await self._ended(request)

    async def _ended(self, request: RunRequest) -> None:
        # Best effort: a delivery this misses goes out at its next scheduled look.
        if request.webhook is not None and self.on_ended is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self.on_ended(request.run_id)

    async def _run_started(self, request: RunRequest, live: Live) -> Handled:
        run_id = request.run_id
        started = live.status
        self.metrics.started(started.created_at, started.started_at)
        _event(
            logging.INFO,
            RunEvent("started", run_id, request.name, attempt=started.attempt),
            "started run=%s name=%s mode=%s attempt=%d",
            run_id,
            request.name,
            request.mode,
            started.attempt,
        )
        task = asyncio.ensure_future(self._run(request, live))
        self.cancellations.track(run_id, task)
        self.metrics.in_flight.inc()
        try:
            outcome = await asyncio.shield(task)
        except (*REDIS_ERRORS, asyncio.CancelledError):
            raise  # Redis lost for longer than the visibility timeout, or shutdown: redelivered
        except BaseException as exc:  # `_run` missed it: still an outcome, never "running"
            failure = describe(exc, self.settings.redact_values)
            outcome = Outcome(run_id, "failed", error=failure, attempt=started.attempt)
        finally:
            self.metrics.in_flight.dec()
            self.cancellations.forget(run_id)
        finished_at = time.time()
        status = RunStatus(
            run_id,
            outcome.state,
            request.name,
            outcome.attempt,
            created_at=started.created_at,
            started_at=started.started_at,
            finished_at=finished_at,
            reason=outcome.reason or (outcome.error.type if outcome.error else ""),
        )
        recorded = await self._durably(
            request,
            lambda: self.records.finish(live.expected, status, outcome, owner=live.owner),
        )
        await self._ended(request)
        duration = finished_at - (started.started_at or finished_at)
        label, reason = outcome_label(outcome), short_reason(outcome)
        if recorded:
            self.metrics.finished(request.name, label, duration)
        else:
            log.warning("outcome already recorded run=%s (not overwritten)", run_id)
        _event(
            logging.INFO,
            RunEvent(
                "finished",
                run_id,
                request.name,
                attempt=outcome.attempt,
                duration=duration,
                outcome=label,
                reason=reason or None,
            ),
            "finished run=%s name=%s state=%s reason=%s attempt=%d duration=%.3f",
            run_id,
            request.name,
            outcome.state,
            reason,
            outcome.attempt,
            duration,
        )
        return Handled(run_id, label, reason)

    async def _run(self, request: RunRequest, live: Live) -> Outcome:
        """Every way a started run can end becomes an outcome: a run that raised anything,
        even outside `Exception`, is recorded as failed, never left "running" with its
        message acknowledged."""
        progress = Progress()
        outcome = await self.attempts.run(request, live, progress)
        # The count of stream entries travels with the outcome: readers check they saw them all.
        return dataclasses.replace(outcome, chunks=progress.published)


def _running(request: RunRequest, previous: RunStatus) -> RunStatus:
    return RunStatus(
        request.run_id,
        "running",
        request.name,
        previous.attempt + 1,
        created_at=previous.created_at,
        started_at=time.time(),
    )


def _event(level: int, fields: RunEvent, message: str, *args: object) -> None:
    run_event(log, level, fields, message, *args)
