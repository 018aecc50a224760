"""What a worker does with one message: verify, claim, load, run, publish.

Everything read from Redis is hostile until its signature checks out, and even then it only
builds allowlisted classes. A message that fails verification is logged and dropped without
touching any run's records (its run id is unproven); every other path ends with exactly one
signed outcome in the run's event stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import random
import socket
import time
import traceback
from collections import OrderedDict
from typing import Any

import redis.asyncio as aredis
from langchain_core.runnables import Runnable, RunnableConfig
from redis.exceptions import WatchError

from runnable_k8s.errors import (
    ConfigurationError,
    DisallowedObject,
    MessageExpired,
    MessageRejected,
    PayloadTooLarge,
    SerializationRefused,
)
from runnable_k8s.protocol import envelope, keys
from runnable_k8s.protocol.allowlist import check_call_kwargs, import_object
from runnable_k8s.protocol.messages import (
    Outcome,
    Protocol,
    RemoteFailure,
    RunRequest,
    RunStatus,
)
from runnable_k8s.protocol.remote_config import import_config
from runnable_k8s.protocol.tracing import remote_parent, sanitize
from runnable_k8s.settings import Settings
from runnable_k8s.worker.claims import POLL as CLAIM_POLL
from runnable_k8s.worker.claims import RunLock
from runnable_k8s.worker.logs import RunEvent, run_event
from runnable_k8s.worker.metrics import RejectReason, RunOutcome, WorkerMetrics
from runnable_k8s.worker.registry import Registry
from runnable_k8s.worker.streaming import Progress as _Progress
from runnable_k8s.worker.streaming import StreamPublisher as _StreamPublisher

log = logging.getLogger("runnable_k8s.worker")

_CACHE_SIZE = 256


class Executor:
    """Runs verified requests on the worker's event loop. One per worker process."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.protocol = Protocol(settings)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._redis: aredis.Redis | None = None
        self._cache: OrderedDict[str, Runnable[Any, Any]] = OrderedDict()
        self.running: dict[str, asyncio.Task[Outcome]] = {}
        self._cancelled: set[str] = set()
        self._retry_types = _exception_types(settings.retry_on)
        self.registry = Registry(settings.allowed_refs)

    @property
    def redis(self) -> aredis.Redis:
        if self._redis is None:
            self._redis = aredis.Redis.from_url(
                self.settings.require_redis_url(), health_check_interval=30
            )
        return self._redis

    # -- entry point ------------------------------------------------------------------------

    async def handle(self, wire: str) -> None:
        """Handle one Celery message's argument. Never raises for bad input."""
        raw = wire.encode() if isinstance(wire, str) else b""
        try:
            request = await self._verify(raw)
        except MessageRejected as exc:
            self._reject(raw, exc)
            return
        _event(
            logging.INFO,
            RunEvent("received", request.run_id, request.name),
            "received run=%s name=%s mode=%s",
            request.run_id,
            request.name,
            request.mode,
        )
        await self._execute(request)

    async def _verify(self, raw: bytes) -> RunRequest:
        if len(raw) > self.protocol.signer.max_body_bytes + 1024:
            raise PayloadTooLarge(f"message of {len(raw)} bytes exceeds the size limit")
        beside = None
        if envelope.needs_body_beside(raw):
            header = envelope.peek_header(raw)
            assert header is not None
            stored = await self.redis.get(keys.body(header.run_id))
            beside = stored if isinstance(stored, bytes) else None
        # Expiry is checked after verification, so an authentic expired run is recorded.
        return self.protocol.open_request(raw, beside=beside, check_expiry=False)

    def _reject(self, raw: bytes, exc: MessageRejected) -> None:
        reason = _reject_reason(exc)
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

    async def _execute(self, request: RunRequest) -> None:
        run_id = request.run_id
        previous = await self._read_status(run_id)
        if previous is not None and previous.done:
            self._refuse(
                request,
                "replay",
                "ignored delivery of finished run run=%s state=%s (replay or duplicate)",
                previous.state,
            )
            return
        if time.time() > request.expires_at:
            self._refuse(request, "expired", "expired run=%s name=%s", request.name)
            outcome = Outcome(run_id, "expired", reason="expired")
            if await self._finish(request, previous, outcome):
                self.metrics.finished(request.name, "expired", None)
            return
        lock = RunLock(self.redis, run_id, self.worker_id)
        if not await self._claim(request, lock):
            return
        async with lock.held():
            if await self._cancel_requested(run_id):
                if await self._finish(request, previous, Outcome(run_id, "cancelled")):
                    self.metrics.finished(request.name, "cancelled", None)
                _event(
                    logging.INFO,
                    RunEvent("finished", run_id, request.name, outcome="cancelled"),
                    "cancelled before start run=%s",
                    run_id,
                )
                return
            started = await self._start(request)
            if started is None:
                self._refuse(
                    request,
                    "replay",
                    "ignored delivery of finished run run=%s (finished meanwhile)",
                )
                return
            await self._run_started(request, started)

    async def _run_started(self, request: RunRequest, started: RunStatus) -> None:
        run_id = request.run_id
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
        task = asyncio.ensure_future(self._run(request, started))
        self.running[run_id] = task
        self.metrics.in_flight.inc()
        try:
            outcome = await asyncio.shield(task)
        finally:
            self.metrics.in_flight.dec()
            self.running.pop(run_id, None)
            self._cancelled.discard(run_id)
        recorded = await self._finish(request, started, outcome, started_at=started.started_at)
        duration = time.time() - (started.started_at or time.time())
        label, reason = _outcome_label(outcome), _short_reason(outcome)
        if recorded:
            self.metrics.finished(request.name, label, duration)
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

    async def _claim(self, request: RunRequest, lock: RunLock) -> bool:
        """Take the run's lock. If another worker holds it (a duplicate delivery, e.g. after
        the visibility timeout), wait: until the holder records an outcome (nothing left to
        do) or its lease lapses without one (it died: this delivery runs the run)."""
        run_id = request.run_id
        waiting = False
        while not await lock.acquire():
            if not waiting:
                log.warning("duplicate delivery of running run=%s: waiting for its holder", run_id)
                waiting = True
            status = await self._read_status(run_id)
            if status is not None and status.done:
                self._refuse(
                    request,
                    "duplicate",
                    "ignored duplicate delivery of run=%s (finished by its holder)",
                )
                return False
            await asyncio.sleep(CLAIM_POLL)
        return True

    async def _run(self, request: RunRequest, started: RunStatus) -> Outcome:
        run_id = request.run_id
        attempt = started.attempt
        try:
            runnable = await self._load(request)
            config = import_config(request.config)
            payload = self.protocol.data.decode_data(request.input)
            if request.kwargs:
                check_call_kwargs(request.kwargs)
        except (DisallowedObject, SerializationRefused) as exc:
            self.metrics.reject("disallowed")
            _event(
                logging.WARNING,
                RunEvent("rejected", run_id, request.name, attempt=attempt, reason="disallowed"),
                "rejected run=%s name=%s reason=%s",
                run_id,
                request.name,
                exc,
            )
            return Outcome(run_id, "failed", reason=f"rejected: {exc}", attempt=attempt)
        progress = _Progress()
        try:
            # One limit for the whole run, retries included, so the lock and the visibility
            # timeout (both above the limit) always outlive it.
            async with asyncio.timeout(self._time_limit(request)):
                while True:
                    try:
                        output = await self._dispatch(request, runnable, payload, config, progress)
                        return Outcome(run_id, "succeeded", output=output, attempt=attempt)
                    except Exception as exc:
                        if not self._should_retry(exc, attempt, progress):
                            return Outcome(
                                run_id, "failed", error=self._failure(exc), attempt=attempt
                            )
                        attempt = await self._backoff(request, started, attempt, exc)
        except TimeoutError:
            return Outcome(run_id, "failed", reason="timeout", attempt=attempt)
        except asyncio.CancelledError:
            if run_id in self._cancelled:
                return Outcome(run_id, "cancelled", attempt=attempt)
            raise

    def _should_retry(self, exc: Exception, attempt: int, progress: _Progress) -> bool:
        # A stream that already sent chunks cannot be replayed without duplicating them.
        return (
            attempt < self.settings.max_attempts
            and not progress.published
            and isinstance(exc, self._retry_types)
        )

    async def _backoff(
        self, request: RunRequest, started: RunStatus, attempt: int, exc: Exception
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
            started, state="retrying", attempt=attempt + 1, reason=type(exc).__name__
        )
        await self._write_status(retrying)
        await asyncio.sleep(delay)
        await self._write_status(dataclasses.replace(retrying, state="running", reason=""))
        return attempt + 1

    async def _dispatch(
        self,
        request: RunRequest,
        runnable: Runnable[Any, Any],
        payload: Any,
        config: RunnableConfig,
        progress: _Progress,
    ) -> bytes:
        data = self.protocol.data
        call = request.kwargs or {}  # validated in _run
        with remote_parent(sanitize(request.trace)):
            if request.mode == "invoke":
                output = await runnable.ainvoke(payload, config, **call)
                return data.encode_data(output, what="output")
            if request.mode == "batch":
                if not isinstance(payload, list) or len(payload) != len(request.configs or []):
                    raise DisallowedObject("batch inputs and configs do not match")
                configs = [import_config(c) for c in request.configs or []]
                outputs = await runnable.abatch(payload, configs, return_exceptions=True, **call)
                items = [
                    {"ok": False, "e": self._failure(out).as_json()}
                    if isinstance(out, Exception)
                    else {"ok": True, "v": out}
                    for out in outputs
                ]
                return data.encode_data(items, what="output")
            publisher = _StreamPublisher(self, request.run_id, progress)
            if request.events:
                events = runnable.astream_events(payload, config, version="v2", **call)
                final = await publisher.events(events)
            else:
                final = await publisher.chunks(runnable.astream(payload, config, **call))
            return data.encode_data(final, what="output")

    async def _load(self, request: RunRequest) -> Runnable[Any, Any]:
        # Only names of runnables that loaded (passed the allowlist) become metric labels.
        if request.ref is not None:
            loaded = await self.registry.load(request.ref)
            self.metrics.names.admit(request.name)
            return loaded
        digest = hashlib.sha256(request.runnable).hexdigest()
        cached = self._cache.get(digest)
        if cached is not None:
            self._cache.move_to_end(digest)
            self.metrics.cache_hits.inc()
            self.metrics.names.admit(request.name)
            return cached
        self.metrics.cache_misses.inc()
        runnable = self.protocol.runnables.decode_runnable(request.runnable)
        self.metrics.names.admit(request.name)
        self._cache[digest] = runnable
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return runnable

    def _time_limit(self, request: RunRequest) -> float:
        limit = self.settings.time_limit
        if request.time_limit is not None and 0 < request.time_limit < limit:
            return request.time_limit
        return limit

    def _failure(self, exc: BaseException) -> RemoteFailure:
        kind = type(exc)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else (f"{kind.__module__}.{kind.__qualname__}")
        )
        text = "".join(traceback.format_exception(exc))
        return RemoteFailure(name, self._redact(str(exc)), self._redact(text))

    def _redact(self, text: str) -> str:
        # Defence in depth: an exception message must not carry a key into Redis.
        for secret in self.settings.redact_values:
            text = text.replace(secret, "[redacted]")
        return text

    # -- records ----------------------------------------------------------------------------

    async def _read_status(self, run_id: str) -> RunStatus | None:
        return self._verified_status(await self.redis.get(keys.status(run_id)), run_id)

    def _verified_status(self, raw: Any, run_id: str) -> RunStatus | None:
        if not isinstance(raw, bytes):
            return None
        try:
            return self.protocol.open_status(raw, run_id)
        except MessageRejected as exc:
            log.warning("ignored unverifiable status record run=%s reason=%s", run_id, exc)
            return None

    async def _write_status(self, status: RunStatus) -> None:
        await self.redis.set(
            keys.status(status.run_id),
            self.protocol.seal_status(status),
            ex=int(self.settings.result_ttl),
        )

    async def _cancel_requested(self, run_id: str) -> bool:
        raw = await self.redis.get(keys.cancel(run_id))
        if not isinstance(raw, bytes):
            return False
        try:
            self.protocol.open_cancel(raw, run_id)
        except MessageRejected as exc:
            log.warning("ignored forged cancellation run=%s reason=%s", run_id, exc)
            return False
        return True

    async def _start(self, request: RunRequest) -> RunStatus | None:
        """Record "running" unless the run finished meanwhile (e.g. cancelled while queued):
        a WATCHed check-and-set, so a concurrent cancel and a start cannot both win."""
        key = keys.status(request.run_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    previous = self._verified_status(await pipe.get(key), request.run_id)
                    if previous is not None and previous.done:
                        return None
                    status = RunStatus(
                        request.run_id,
                        "running",
                        request.name,
                        (previous.attempt if previous else 0) + 1,
                        created_at=previous.created_at if previous else None,
                        started_at=time.time(),
                    )
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, self.protocol.seal_status(status), ex=self._ttl)
                    await pipe.execute()
                    return status
                except WatchError:
                    continue

    async def _finish(
        self,
        request: RunRequest,
        previous: RunStatus | None,
        outcome: Outcome,
        *,
        started_at: float | None = None,
    ) -> bool:
        """Publish the outcome and the final status in one transaction, unless an outcome is
        already recorded (exactly one outcome per run). Returns whether this one was."""
        run_id = request.run_id
        status = RunStatus(
            run_id,
            outcome.state,
            request.name,
            outcome.attempt if started_at is not None else (previous.attempt if previous else 0),
            created_at=previous.created_at if previous else None,
            started_at=started_at,
            finished_at=time.time(),
            reason=outcome.reason or (outcome.error.type if outcome.error else ""),
        )
        key = keys.status(run_id)
        stream = keys.events(run_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    current = self._verified_status(await pipe.get(key), run_id)
                    if current is not None and current.done:
                        log.warning(
                            "outcome already recorded run=%s state=%s", run_id, current.state
                        )
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.xadd(stream, {"k": "r", "m": self.protocol.seal_outcome(outcome)})
                    pipe.expire(stream, self._ttl)
                    pipe.set(key, self.protocol.seal_status(status), ex=self._ttl)
                    pipe.delete(keys.body(run_id))
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    @property
    def _ttl(self) -> int:
        return int(self.settings.result_ttl)

    # -- cancellation -----------------------------------------------------------------------

    async def listen_for_cancellations(self) -> None:
        """Cancel local runs named on the cancel channel (after checking the signed request)."""
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(keys.CANCEL_CHANNEL)
                async for message in pubsub.listen():
                    run_id = message.get("data", b"")
                    run_id = run_id.decode() if isinstance(run_id, bytes) else str(run_id)
                    task = self.running.get(run_id)
                    if task is not None and await self._cancel_requested(run_id):
                        _event(
                            logging.INFO,
                            RunEvent("cancelling", run_id),
                            "cancelling run=%s",
                            run_id,
                        )
                        self._cancelled.add(run_id)
                        task.cancel()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: resubscribe after a pause
                log.warning("cancel listener lost Redis: %s", exc)
                await asyncio.sleep(1.0)


def _event(level: int, fields: RunEvent, message: str, *args: object) -> None:
    run_event(log, level, fields, message, *args)


def _reject_reason(exc: MessageRejected) -> RejectReason:
    """The metric label of a refused message: a fixed set, never the message's own text."""
    if isinstance(exc, PayloadTooLarge):
        return "too_large"
    if isinstance(exc, MessageExpired):
        return "expired"
    if isinstance(exc, DisallowedObject):
        return "disallowed"
    if str(exc).startswith(("signature mismatch", "expected a ", "message belongs to run")):
        return "bad_signature"
    return "malformed"


def _outcome_label(outcome: Outcome) -> RunOutcome:
    if outcome.state == "failed" and outcome.reason == "timeout":
        return "timeout"
    if outcome.state == "failed" and outcome.reason.startswith("rejected"):
        return "rejected"
    if outcome.state in ("succeeded", "cancelled", "expired"):
        return outcome.state
    return "failed"


def _short_reason(outcome: Outcome) -> str:
    # A rejection's text may quote the refused object: logs get its kind instead.
    if outcome.reason.startswith("rejected"):
        return "disallowed"
    return outcome.reason or (outcome.error.type if outcome.error else "")


def _exception_types(paths: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    """Resolve `RUNNABLE_K8S_RETRY_ON` import paths (at start-up: a typo fails loudly)."""
    types: list[type[BaseException]] = []
    for path in paths:
        obj = import_object(path)
        if not (isinstance(obj, type) and issubclass(obj, BaseException)):
            raise ConfigurationError(f"RUNNABLE_K8S_RETRY_ON: {path!r} is not an exception type")
        types.append(obj)
    return tuple(types)
