"""What a worker does with one message: verify, claim, load, run, publish.

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
import random
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import redis.asyncio as aredis
from langchain_core.runnables import Runnable, RunnableConfig
from redis import Redis as SyncRedis
from redis.exceptions import ResponseError

from runnable_k8s import connections
from runnable_k8s.errors import (
    DisallowedObject,
    MessageRejected,
    PayloadTooLarge,
    SerializationRefused,
)
from runnable_k8s.protocol import envelope, rejection
from runnable_k8s.protocol.allowlist import check_call_kwargs
from runnable_k8s.protocol.interrupts import has_interrupts
from runnable_k8s.protocol.messages import Outcome, Protocol, RunRequest, RunStatus, State
from runnable_k8s.protocol.remote_config import import_config
from runnable_k8s.protocol.tracing import remote_parent, sanitize
from runnable_k8s.settings import Settings
from runnable_k8s.store import keys
from runnable_k8s.store.records import RunRecords
from runnable_k8s.worker.cancellation import Cancellations
from runnable_k8s.worker.claims import POLL as CLAIM_POLL
from runnable_k8s.worker.claims import LeaseKeeper
from runnable_k8s.worker.failures import (
    describe,
    exception_types,
    outcome_label,
    reject_reason,
    short_reason,
)
from runnable_k8s.worker.flow import FlowControl
from runnable_k8s.worker.graph_state import call_graph
from runnable_k8s.worker.graphs import graph_stream
from runnable_k8s.worker.logs import RunEvent, run_event
from runnable_k8s.worker.metrics import RejectReason, WorkerMetrics
from runnable_k8s.worker.outage import REDIS_ERRORS as _REDIS_ERRORS
from runnable_k8s.worker.outage import ride_out
from runnable_k8s.worker.registry import Registry, RunnableSource
from runnable_k8s.worker.stream_writer import StreamInterrupted as _StreamInterrupted
from runnable_k8s.worker.streaming import Progress as _Progress
from runnable_k8s.worker.streaming import StreamPublisher as _StreamPublisher
from runnable_k8s.worker.task_state import Handled, already_ended
from runnable_k8s.worker.thread_runs import ThreadRuns
from runnable_k8s.worker.waits import WaitRecords

log = logging.getLogger("runnable_k8s.worker")

_LATE_CANCEL_CHECK = 0.5

# Connections beyond one per run: the cancel listener's subscription, heartbeat, rescue sweep.
_SPARE_CONNECTIONS: Final = 16
# How long a command waits for a free connection before it counts as Redis being away.
_CONNECTION_WAIT: Final = 30.0
# What a run id can look like (producers make 32 hex digits): a claimed id of any other shape
# gets no rejection notice, so hostile ids cannot name other keys.
_RUN_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")

T = TypeVar("T")

# Errors that mean "Redis is not reachable right now", not "this message is bad".
REDIS_ERRORS: Final = _REDIS_ERRORS


class _NotRead:
    """`handle`'s default: the body beside the message was not read by the caller."""


NOT_READ: Final = _NotRead()


class Executor:
    """Runs verified requests on the worker's event loop. One per worker process."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.protocol = Protocol(settings)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._redis: aredis.Redis | None = None
        self._sync_redis: SyncRedis | None = None
        self._records: RunRecords | None = None
        self._leases: LeaseKeeper | None = None
        self._thread_runs: ThreadRuns | None = None
        self.cancellations = Cancellations()
        # Called with the run id once a run with a webhook has its outcome (worker/webhooks.py).
        self.on_ended: Callable[[str], Awaitable[None]] | None = None
        self._background: set[asyncio.Future[None]] = set()
        self._retry_types = exception_types(settings.retry_on)
        waits = WaitRecords(lambda: self.redis, self.protocol.signer, settings.result_ttl)
        self.flow = FlowControl(settings, lambda: self.redis, self.metrics, waits)
        self.runnables = RunnableSource(
            self.protocol, Registry(settings.allowed_refs), self.metrics, self.flow.attach
        )

    @property
    def redis(self) -> aredis.Redis:
        if self._redis is None:
            # redis-py's pools hold 100 connections and raise at once when all are taken:
            # with more than 100 runs streaming, their XADDs failed (MaxConnectionsError). A
            # run holds one connection at a time, so a pool a little larger than the
            # concurrency, that waits for a free connection instead of raising, never lacks
            # one for long.
            self._redis = connections.async_client(
                self.settings.require_redis_url(),
                blocking=True,
                max_connections=self.settings.concurrency + _SPARE_CONNECTIONS,
                timeout=_CONNECTION_WAIT,
                health_check_interval=30,
                socket_read_size=1024 * 1024,
            )
        return self._redis

    @property
    def sync_redis(self) -> SyncRedis:
        """A blocking client, for pool threads (see `fetch_beside`)."""
        if self._sync_redis is None:
            self._sync_redis = connections.sync_client(
                self.settings.require_redis_url(),
                blocking=True,
                max_connections=self.settings.concurrency + _SPARE_CONNECTIONS,
                timeout=_CONNECTION_WAIT,
                health_check_interval=30,
            )
        return self._sync_redis

    def close_sync_redis(self) -> None:
        if self._sync_redis is not None:
            self._sync_redis.close()

    @property
    def leases(self) -> LeaseKeeper:
        if self._leases is None:
            self._leases = LeaseKeeper(
                self.redis, lease=self.settings.lease, on_cancel_record=self._cancel_record
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
                on_forged=_forged,
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
        key = _body_key(wire.encode() if isinstance(wire, str) else b"")
        if key is None:
            return None
        try:
            stored = self.sync_redis.get(key)
        except ResponseError:  # a key of another type where the body belongs: no body
            return None
        return stored if isinstance(stored, bytes) else None

    async def handle(self, wire: str, beside: bytes | _NotRead | None = NOT_READ) -> Handled:
        """Handle one Celery message's argument and say what it came to (for the Celery
        task's state). Never raises for bad input. `beside` is what `fetch_beside` read
        (None: nothing); left out, it is read here."""
        raw = wire.encode() if isinstance(wire, str) else b""
        try:
            request = await self._verify(raw, beside)
        except MessageRejected as exc:
            ended = await self._ended_without_body(raw, beside)
            return ended if ended is not None else await self._reject(raw, beside, exc)
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

    async def _verify(self, raw: bytes, beside: bytes | _NotRead | None) -> RunRequest:
        if len(raw) > self.protocol.signer.max_body_bytes + 1024:
            raise PayloadTooLarge(f"message of {len(raw)} bytes exceeds the size limit")
        if isinstance(beside, _NotRead):
            beside = None
            key = _body_key(raw)
            if key is not None:
                with contextlib.suppress(ResponseError):  # a key of another type: no body
                    stored = await self.redis.get(key)
                    beside = stored if isinstance(stored, bytes) else None
        # Expiry is checked after verification, so an authentic expired run is recorded.
        return self.protocol.open_request(raw, beside=beside, check_expiry=False)

    async def _ended_without_body(
        self, raw: bytes, beside: bytes | _NotRead | None
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
            if isinstance(beside, _NotRead) and await self.redis.exists(keys.body(run_id)):
                return None  # the body is there: the message itself failed verification
            status = (await self.records.read(run_id)).status
        except ResponseError:
            return None
        if status is None or not status.done:
            return None
        self.metrics.reject("replay")
        _event(
            logging.WARNING,
            RunEvent("rejected", run_id, status.name, reason="replay"),
            "ignored delivery of finished run run=%s state=%s (replay or duplicate; its body "
            "was dropped when it finished)",
            run_id,
            status.state,
        )
        return already_ended(status)

    async def _reject(
        self, raw: bytes, beside: bytes | _NotRead | None, exc: MessageRejected
    ) -> Handled:
        reason = reject_reason(exc)
        self.metrics.reject(reason)
        header = envelope.peek_header(raw)
        # Unverified: the id is only what the message claims, cut short.
        claimed = header.run_id[:100] if header else None
        _event(
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
                if isinstance(beside, _NotRead):
                    with contextlib.suppress(ResponseError):  # another type: no body
                        stored = await self.redis.get(keys.body(claimed))
                        beside = stored if isinstance(stored, bytes) else None
                body = beside if isinstance(beside, bytes) else None
            if await self.records.note_rejection(claimed, raw, body, reason):
                log.warning(
                    "run=%s is no longer pending rescue: its stored message failed verification",
                    claimed,
                )
        except (ResponseError, *REDIS_ERRORS) as exc_:
            # The rescue sweep brings the message back, and its next rejection tells again.
            log.warning("could not leave a rejection notice for run=%s: %s", claimed, exc_)
        return Handled(claimed, "refused", reason)

    def _refuse(
        self, request: RunRequest, reason: RejectReason, message: str, *args: object
    ) -> None:
        """Log and count a verified run that is not executed (replay, duplicate, expired);
        `message` takes the run id first, then `args`."""
        self.metrics.reject(reason)
        _event(
            logging.INFO if reason == "expired" else logging.WARNING,
            RunEvent("rejected", request.run_id, request.name, reason=reason),
            message,
            request.run_id,
            *args,
        )

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
                    self._refuse_finished(request, seen.status, duplicate=waiting)
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
                self._refuse(request, "expired", "expired run=%s name=%s", request.name)
                await self._end_unstarted(
                    request, owner, base, expected, Outcome(run_id, "expired", reason="expired")
                )
                return Handled(run_id, "expired")
            return await self._run_started(request, _Live(running, written, owner))

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

    def _refuse_finished(self, request: RunRequest, status: RunStatus, *, duplicate: bool) -> None:
        if duplicate:
            self._refuse(
                request,
                "duplicate",
                "ignored duplicate delivery of run=%s (finished by its holder)",
            )
        else:
            self._refuse(
                request,
                "replay",
                "ignored delivery of finished run run=%s state=%s (replay or duplicate)",
                status.state,
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

    async def _run_started(self, request: RunRequest, live: _Live) -> Handled:
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
        # A cancel published between the claim and `track` found no task to cancel; one look
        # at the record shortly after covers that (and a publish missed while reconnecting).
        asyncio.get_running_loop().call_later(_LATE_CANCEL_CHECK, self._spawn_check, run_id)
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

    async def _run(self, request: RunRequest, live: _Live) -> Outcome:
        """Every way a started run can end becomes an outcome: a run that raised anything,
        even outside `Exception`, is recorded as failed, never left "running" with its
        message acknowledged."""
        progress = _Progress()
        outcome = await self._attempts(request, live, progress)
        # The count of stream entries travels with the outcome: readers check they saw them all.
        return dataclasses.replace(outcome, chunks=progress.published)

    async def _attempts(self, request: RunRequest, live: _Live, progress: _Progress) -> Outcome:
        run_id = request.run_id
        attempt = live.status.attempt
        # One limit for the whole run (loading and retries included), so the lease and the
        # visibility timeout (both above the limit) always outlive it.
        limit = asyncio.timeout(self._time_limit(request))
        try:
            async with limit:
                try:
                    runnable = await self.runnables.load(request)
                    config = import_config(request.config)
                    payload = self.protocol.data.decode_data(request.input)
                    if request.kwargs:
                        check_call_kwargs(request.kwargs)
                except (DisallowedObject, SerializationRefused) as exc:
                    return self._rejected_run(request, attempt, exc)
                except asyncio.CancelledError:
                    raise  # the time limit, a cancellation or shutdown: handled below
                except BaseException as exc:  # anything else while loading: a failed run
                    # SystemExit, KeyboardInterrupt and the like included: raised in the
                    # loop's thread they can only come from application code (signals reach
                    # the main thread), and let through they would stop the event loop.
                    failure = describe(exc, self.settings.redact_values)
                    return Outcome(run_id, "failed", error=failure, attempt=attempt)
                while True:
                    try:
                        output, paused = await self._dispatch(
                            request, runnable, payload, config, progress
                        )
                        state: State = "interrupted" if paused else "succeeded"
                        return Outcome(run_id, state, output=output, attempt=attempt)
                    except asyncio.CancelledError:
                        raise
                    except BaseException as exc:
                        if exc is progress.own_error and isinstance(exc, _StreamInterrupted):
                            # The reader has the earlier delivery's entries, then this outcome.
                            progress.published = exc.entries
                            return Outcome(run_id, "failed", reason="interrupted", attempt=attempt)
                        if exc is progress.own_error:
                            raise  # Redis gone too long: ours, not the runnable's; redelivered
                        if not self._should_retry(exc, attempt, progress):
                            failure = describe(exc, self.settings.redact_values)
                            return Outcome(run_id, "failed", error=failure, attempt=attempt)
                        attempt = await self._backoff(request, live, attempt, exc)
        except TimeoutError:
            if not limit.expired():
                raise  # a Redis command of ours timed out for too long: redelivered
            return Outcome(run_id, "failed", reason="timeout", attempt=attempt)
        except asyncio.CancelledError as exc:
            if self.cancellations.requested(run_id):
                return Outcome(run_id, "cancelled", attempt=attempt)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task is being cancelled (shutdown): not the run's doing
            # The runnable let a CancelledError of its own escape (an inner task cancelled).
            failure = describe(exc, self.settings.redact_values)
            return Outcome(run_id, "failed", error=failure, attempt=attempt)

    def _rejected_run(self, request: RunRequest, attempt: int, exc: Exception) -> Outcome:
        self.metrics.reject("disallowed")
        _event(
            logging.WARNING,
            RunEvent(
                "rejected", request.run_id, request.name, attempt=attempt, reason="disallowed"
            ),
            "rejected run=%s name=%s reason=%s",
            request.run_id,
            request.name,
            exc,
        )
        return Outcome(request.run_id, "failed", reason=f"rejected: {exc}", attempt=attempt)

    def _should_retry(self, exc: BaseException, attempt: int, progress: _Progress) -> bool:
        # A stream that already sent chunks cannot be replayed without duplicating them.
        return (
            attempt < self.settings.max_attempts
            and not progress.published
            and isinstance(exc, self._retry_types)
        )

    async def _backoff(
        self, request: RunRequest, live: _Live, attempt: int, exc: BaseException
    ) -> int:
        # Exponential backoff with full jitter: retries from many runs spread out instead of
        # hitting a rate-limited provider in waves.
        cap = min(self.settings.retry_backoff_max, self.settings.retry_backoff * 2 ** (attempt - 1))
        delay = random.uniform(0, cap)
        self.metrics.retried(request.name)
        _event(
            logging.INFO,
            RunEvent(
                "retrying", request.run_id, request.name, attempt + 1, reason=type(exc).__name__
            ),
            "retrying run=%s attempt=%d delay=%.2f error=%s",
            request.run_id,
            attempt + 1,
            delay,
            type(exc).__name__,
        )
        retrying = dataclasses.replace(
            live.status, state="retrying", attempt=attempt + 1, reason=type(exc).__name__
        )
        # The lease holder writes blindly (so a repeated write is harmless), and remembers
        # what `finish` must find in place. A Redis blip here is not the runnable's failure.
        live.expected = await self._durably(
            request, lambda: self.records.write_status(retrying), "retrying"
        )
        await asyncio.sleep(delay)
        running = dataclasses.replace(retrying, state="running", reason="")
        live.expected = await self._durably(
            request, lambda: self.records.write_status(running), "retrying"
        )
        return attempt + 1

    async def _dispatch(
        self,
        request: RunRequest,
        runnable: Runnable[Any, Any],
        payload: Any,
        config: RunnableConfig,
        progress: _Progress,
    ) -> tuple[bytes, bool]:
        """The encoded output, and whether a graph stopped at `interrupt()`."""
        data = self.protocol.data
        call = request.kwargs or {}  # validated in _run
        with remote_parent(sanitize(request.trace)), self.flow.run(request.run_id):
            if request.graph is not None:  # the graph's state API: see `graph_state`
                answer = await call_graph(runnable, request.graph, payload, config, request.ref)
                return data.encode_data(answer, what="output"), False
            if request.mode == "invoke":
                output = await runnable.ainvoke(payload, config, **call)
                return data.encode_data(output, what="output"), has_interrupts(output)
            if request.mode == "batch":
                if not isinstance(payload, list) or len(payload) != len(request.configs or []):
                    raise DisallowedObject("batch inputs and configs do not match")
                configs = [import_config(c) for c in request.configs or []]
                outputs = await runnable.abatch(payload, configs, return_exceptions=True, **call)
                items = [
                    {"ok": False, "e": describe(out, self.settings.redact_values).as_json()}
                    if isinstance(out, BaseException)
                    else {"ok": True, "v": out}
                    for out in outputs
                ]
                # Each item tells its own interrupts; the batch as a whole succeeded.
                return data.encode_data(items, what="output"), False
            publisher = _StreamPublisher(self, request.run_id, progress)
            # A graph's chunks do not add up to what `invoke` returns: see `graphs`.
            graph = graph_stream(runnable, call)
            if request.events:
                events = runnable.astream_events(payload, config, version="v2", **call)
                final = await publisher.events(events, ended=graph is not None)
            elif graph is not None:
                chunks = runnable.astream(payload, config, **graph.kwargs)
                final = await publisher.graph(chunks, graph)
            else:
                final = await publisher.chunks(runnable.astream(payload, config, **call))
            return data.encode_data(final, what="output"), has_interrupts(final)

    def _time_limit(self, request: RunRequest) -> float:
        limit = self.settings.time_limit
        if request.time_limit is not None and 0 < request.time_limit < limit:
            return request.time_limit
        return limit

    # -- cancellation -----------------------------------------------------------------------

    def _spawn_check(self, run_id: str) -> None:
        if run_id in self.cancellations.running:
            # Keep a reference: the loop holds tasks only weakly.
            task = asyncio.ensure_future(self._check_cancel(run_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _check_cancel(self, run_id: str) -> None:
        if run_id not in self.cancellations.running:
            return  # already over: nothing to cancel
        with contextlib.suppress(Exception):
            record = await self.redis.get(keys.cancel(run_id))
            if isinstance(record, bytes):
                self._cancel_record(run_id, record)

    def _cancel_record(self, run_id: str, record: bytes) -> None:
        """A cancellation record found for a run this worker holds (lease renewal round)."""
        if self.cancellations.requested(run_id):
            return
        try:
            self.protocol.open_cancel(record, run_id)
        except MessageRejected as exc:
            _forged("cancellation", run_id, exc)
            return
        if self.cancellations.cancel(run_id):
            _event(logging.INFO, RunEvent("cancelling", run_id), "cancelling run=%s", run_id)

    async def listen_for_cancellations(self) -> None:
        """Cancel local runs named on the cancel channel (after checking the signed request)."""

        async def verified(run_id: str) -> bool:
            return (await self.records.read(run_id)).cancel_requested

        def announce(run_id: str) -> None:
            _event(logging.INFO, RunEvent("cancelling", run_id), "cancelling run=%s", run_id)

        await self.cancellations.listen(self.redis, verified, announce)


def _body_key(raw: bytes) -> str | None:
    """The key of the body this (unverified) message says travels beside it, if any."""
    if not envelope.needs_body_beside(raw):
        return None
    header = envelope.peek_header(raw)
    return None if header is None else keys.body(header.run_id)


@dataclasses.dataclass
class _Live:
    """A started run: its status, the digest of its status record (for `finish`), and the
    owner token of this delivery's lease."""

    status: RunStatus
    expected: str
    owner: str


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


def _forged(what: str, run_id: str, exc: Exception) -> None:
    log.warning("ignored unverifiable %s run=%s reason=%s", what, run_id, exc)
