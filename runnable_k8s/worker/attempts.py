"""Time limits and retries around a started run, kept off the main path (worker/execution.py
asks `Attempts.run` for the run's outcome, as dramatiq's middleware wraps `process_message`).

Within one time limit for the whole run (loading and retries included, so the lease and the
visibility timeout, both above it, always outlive it): prepare the call, then call, again after
a backoff while a `RUNNABLE_K8S_RETRY_ON` error allows. Every way this can end becomes an
outcome, except the worker's own trouble (Redis gone for longer than the visibility timeout,
shutdown), which is raised so the message is delivered again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable

from runnable_k8s.errors import DisallowedObject, SerializationRefused
from runnable_k8s.protocol.messages import Outcome, RunRequest, RunStatus, State
from runnable_k8s.protocol.reasons import Reason, rejected
from runnable_k8s.settings import Settings
from runnable_k8s.store.records import RunRecords
from runnable_k8s.worker.cancellation import Cancellations
from runnable_k8s.worker.dispatch import Dispatcher
from runnable_k8s.worker.failures import describe, exception_types
from runnable_k8s.worker.logs import RunEvent, run_event
from runnable_k8s.worker.metrics import WorkerMetrics
from runnable_k8s.worker.outage import ride_out
from runnable_k8s.worker.stream_writer import Progress, StreamInterrupted

log = logging.getLogger("runnable_k8s.worker")


@dataclasses.dataclass
class Live:
    """A started run: its status (the current attempt's), the digest of its status record
    (what `finish` must find in place), and the owner token of this delivery's lease."""

    status: RunStatus
    expected: str
    owner: str


class Attempts:
    def __init__(
        self,
        settings: Settings,
        metrics: WorkerMetrics,
        records: Callable[[], RunRecords],
        cancellations: Cancellations,
        dispatcher: Dispatcher,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._records = records
        self._cancellations = cancellations
        self._dispatcher = dispatcher
        self._retry_types = exception_types(settings.retry_on)

    async def run(self, request: RunRequest, live: Live, progress: Progress) -> Outcome:
        """The run's outcome, within one time limit for the whole run. Raises only for the
        worker's own trouble (Redis gone too long, shutdown): the message is delivered again."""
        run_id = request.run_id
        limit = asyncio.timeout(self._time_limit(request))
        try:
            async with limit:
                return await self._attempts(request, live, progress)
        except TimeoutError:
            if not limit.expired():
                raise  # a Redis command of ours timed out for too long: redelivered
            return Outcome(run_id, "failed", reason=Reason.TIMEOUT, attempt=live.status.attempt)
        except asyncio.CancelledError as exc:
            if self._cancellations.requested(run_id):
                return Outcome(run_id, "cancelled", attempt=live.status.attempt)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task is being cancelled (shutdown): not the run's doing
            # The runnable let a CancelledError of its own escape (an inner task cancelled).
            return self._failed(run_id, exc, live.status.attempt)

    async def _attempts(self, request: RunRequest, live: Live, progress: Progress) -> Outcome:
        """Prepare the call, then call, again after a backoff while `RETRY_ON` allows.
        Cancellation (the time limit's included) is left to `run`."""
        run_id = request.run_id
        try:
            prepared = await self._dispatcher.prepare(request)
        except (DisallowedObject, SerializationRefused) as exc:
            return self._rejected(request, live.status.attempt, exc)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # anything else while loading: a failed run
            # SystemExit, KeyboardInterrupt and the like included: raised in the loop's
            # thread they can only come from application code (signals reach the main
            # thread), and let through they would stop the event loop.
            return self._failed(run_id, exc, live.status.attempt)
        while True:
            attempt = live.status.attempt
            try:
                output, paused = await self._dispatcher.call(request, prepared, progress)
                state: State = "interrupted" if paused else "succeeded"
                return Outcome(run_id, state, output=output, attempt=attempt)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                if exc is progress.own_error and isinstance(exc, StreamInterrupted):
                    # The reader has the earlier delivery's entries, then this outcome.
                    progress.published = exc.entries
                    return Outcome(run_id, "failed", reason=Reason.INTERRUPTED, attempt=attempt)
                if exc is progress.own_error:
                    raise  # Redis gone too long: ours, not the runnable's; redelivered
                if not self._should_retry(exc, attempt, progress):
                    return self._failed(run_id, exc, attempt)
                await self._backoff(request, live, exc)

    def _failed(self, run_id: str, exc: BaseException, attempt: int) -> Outcome:
        failure = describe(exc, self._settings.redact_values)
        return Outcome(run_id, "failed", error=failure, attempt=attempt)

    def _rejected(self, request: RunRequest, attempt: int, exc: Exception) -> Outcome:
        self._metrics.reject("disallowed")
        run_event(
            log,
            logging.WARNING,
            RunEvent(
                "rejected", request.run_id, request.name, attempt=attempt, reason="disallowed"
            ),
            "rejected run=%s name=%s reason=%s",
            request.run_id,
            request.name,
            exc,
        )
        return Outcome(request.run_id, "failed", reason=rejected(str(exc)), attempt=attempt)

    def _time_limit(self, request: RunRequest) -> float:
        limit = self._settings.time_limit
        if request.time_limit is not None and 0 < request.time_limit < limit:
            return request.time_limit
        return limit

    def _should_retry(self, exc: BaseException, attempt: int, progress: Progress) -> bool:
        # A stream that already sent chunks cannot be replayed without duplicating them.
        return (
            attempt < self._settings.max_attempts
            and not progress.published
            and isinstance(exc, self._retry_types)
        )

    async def _backoff(self, request: RunRequest, live: Live, exc: BaseException) -> None:
        """Wait before the next attempt, its status recorded ("retrying", then "running")."""
        # Exponential backoff with full jitter: retries from many runs spread out instead of
        # hitting a rate-limited provider in waves.
        settings, attempt = self._settings, live.status.attempt
        cap = min(settings.retry_backoff_max, settings.retry_backoff * 2 ** (attempt - 1))
        delay = random.uniform(0, cap)
        self._metrics.retried(request.name)
        run_event(
            log,
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
        live.expected = await self._write(request, retrying)
        await asyncio.sleep(delay)
        running = dataclasses.replace(retrying, state="running", reason="")
        live.expected = await self._write(request, running)
        live.status = running

    async def _write(self, request: RunRequest, status: RunStatus) -> str:
        return await ride_out(
            lambda: self._records().write_status(status),
            within=self._settings.effective_visibility_timeout,
            what="retrying",
            run_id=request.run_id,
        )
