"""The producer's side of Redis: enqueue runs, read statuses, wait for outcomes and chunks.

Waiting never polls: every wait subscribes to its runs' event streams, and the process's one
stream reader (producer/reader.py, one blocking XREAD for all of them) hands each its entries
the moment a worker appends them (producer/waiting.py). Only a run with a rejection notice in
its stream is looked at again between waits, until the notice is settled
(producer/rejections.py). The asyncio client (aclient.py) shares every decision made here
(`_Plan`, `waiting`, `stream_entries`); only the I/O differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer
from redis.exceptions import WatchError

from runnable_k8s import connections
from runnable_k8s.errors import BrokerUnavailable, RunnableK8sError, RunNotFound
from runnable_k8s.producer import durable, reader, rejections, waiting
from runnable_k8s.producer.redis_errors import translated
from runnable_k8s.producer.stream_entries import Event
from runnable_k8s.producer.thread_submit import entered_runs, raise_busy, rollback_record
from runnable_k8s.protocol import keys, priority, task_message
from runnable_k8s.protocol.graph_state import reads_only
from runnable_k8s.protocol.messages import Outcome, Protocol, RunRequest, RunStatus
from runnable_k8s.protocol.webhook import WebhookDelivery
from runnable_k8s.settings import Settings
from runnable_k8s.store import threads, webhooks
from runnable_k8s.store.cancel import queue_cancel as _queue_cancel
from runnable_k8s.store.submit import Enqueuer, Submission
from runnable_k8s.store.threads import Strategy, TransactionThreads

_WATCH_RETRIES = 20
_CONNECTION: dict[str, Any] = {
    "health_check_interval": 30,
    "socket_keepalive": True,
    "socket_connect_timeout": 5,
    # Above the longest XREAD block: redis-py's default read timeout (5 s) would end every
    # wait for a longer run with a timeout error.
    "socket_timeout": waiting.MAX_BLOCK_MS / 1000 + 10,
}


def new_run_id() -> str:
    return uuid.uuid4().hex


def _queued_status(protocol: Protocol, request: RunRequest, now: float) -> bytes:
    return protocol.seal_status(
        RunStatus(request.run_id, "queued", request.name, 0, created_at=now)
    )


def _description(request: RunRequest) -> str:
    # What Flower and `celery inspect` show: never the payload.
    return f"{request.mode} {request.name} run={request.run_id}"[:200]


class _Plan:
    """The Redis commands of one submission, computed once for either client."""

    def __init__(self, protocol: Protocol, requests: Sequence[RunRequest]) -> None:
        settings = protocol.settings
        now = time.time()
        ttl = int(settings.result_ttl)
        self.sets: list[tuple[str, bytes, int]] = []
        # Per priority list (protocol/priority.py), each LPUSHed in the same transaction.
        self.messages: dict[str, list[str]] = {}
        self.pending: dict[str, float] = {}
        self.webhooks: dict[str, float] = {}
        # Runs with a thread_id: queued by the thread script instead (store/threads.py).
        self.threads: list[tuple[str, str, int]] = []
        self.now = now
        for original in requests:
            queued = _queued_status(protocol, original, now)
            # The worker starts the run by compare-and-set against this exact record, without
            # reading it first: the request names it by digest.
            request = dataclasses.replace(
                original, queued_digest=hashlib.sha1(queued).hexdigest(), created_at=now
            )
            wire, beside = protocol.seal_request(request)
            self.sets.append((keys.status(request.run_id), queued, ttl))
            life = max(1, int(request.expires_at - now) + int(settings.time_limit) + 60)
            if beside is not None:
                self.sets.append((keys.body(request.run_id), beside, life))
            queue = priority.list_name(settings.queue, priority.check(request.priority))
            message = task_message.build(
                wire.decode(),
                run_id=request.run_id,
                queue=queue,
                description=_description(request),
            )
            # Kept until a worker starts the run, so a message the broker loses (Redis dying
            # between a worker's BRPOP and kombu's bookkeeping) can be enqueued again.
            self.sets.append((keys.message(request.run_id), message.encode(), life))
            if request.webhook is not None:
                record, look = webhooks.plan(protocol.signer, request.run_id, request.webhook, now)
                self.sets.append((keys.webhook(request.run_id), record, ttl))
                self.webhooks[request.run_id] = look
            thread_id = _turn_thread(request)
            if thread_id is not None:
                self.threads.append((request.run_id, thread_id, life))
                continue
            self.messages.setdefault(queue, []).append(message)
            self.pending[request.run_id] = now
        self.queue = settings.queue
        self.pending_key = keys.pending(settings.queue)
        self.webhooks_key = keys.webhooks(settings.queue)
        # A key the transaction sets, and its run: whether it survived a failover.
        self.probe = (self.sets[0][0], requests[0].run_id)


def _turn_thread(request: RunRequest) -> str | None:
    """The thread whose turn a run waits for. A state read (get_state) waits for none: it reads
    the thread's last checkpoint while a run goes on, as in-process (see graph_state)."""
    return None if reads_only(request.graph) else threads.thread_of(request.config)


def _status_or_none(protocol: Protocol, raw: Any, run_id: str) -> RunStatus | None:
    return None if not isinstance(raw, bytes) else protocol.open_status(raw, run_id)


def _existing(protocol: Protocol, raw: Any, run_id: str) -> RunStatus:
    status = _status_or_none(protocol, raw, run_id)
    if status is None:
        raise RunNotFound(f"no run {run_id} (never submitted, or expired)", run_id=run_id)
    return status


class Client:
    """Synchronous producer client. One per `Settings`; thread-safe (redis-py pools are)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.protocol = Protocol(settings)
        self._redis = connections.sync_client(
            settings.require_redis_url(),
            **_CONNECTION,
            # hiredis parses replies fast, but its command packer copies every argument
            # (1.5 ms for a 1 MB body); redis-py's own packer sends large ones as they are.
            command_packer=PythonRespSerializer(
                6000,
                Encoder("utf-8", "strict", False).encode,  # type: ignore[no-untyped-call]
            ),
        )
        self._threads = TransactionThreads(self._redis, settings)
        self._enqueue = Enqueuer(self._redis)
        self._reader = reader.SyncReader(self._redis)

    def close(self) -> None:
        self._redis.close()

    def submit(
        self,
        requests: Sequence[RunRequest],
        *,
        records: Sequence[tuple[str, bytes, int]] = (),
        strategy: Strategy = threads.DEFAULT,
    ) -> None:
        """Enqueue runs: statuses, large bodies and messages in one transaction, with
        `records` (key, signed value, ttl s) beside them (e.g. a retry's link). A run with a
        `configurable.thread_id` waits for its thread as `strategy` says (store/threads.py).

        Raises:
            BrokerUnavailable: Redis is unreachable; nothing was enqueued.
            ThreadBusy: strategy "reject" and a run's thread was held; none of the runs on a
                busy thread was enqueued.
        """
        if not any(_turn_thread(r) is not None for r in requests):
            # The usual case, one script (store/submit.py); runs on a thread go through the
            # thread scripts in a transaction below.
            submission = Submission(self.protocol, requests, records)
            self._write(lambda: self._enqueue(submission), submission.probe)
            return
        plan = _Plan(self.protocol, requests)

        def write() -> None:
            with self._redis.pipeline(transaction=True) as pipe:
                for key, value, ttl in [*plan.sets, *records]:
                    pipe.set(key, value, ex=ttl)
                if plan.messages:
                    pipe.zadd(plan.pending_key, plan.pending)
                    for queue, messages in plan.messages.items():
                        pipe.lpush(queue, *messages)
                if plan.webhooks:
                    pipe.zadd(plan.webhooks_key, plan.webhooks)
                for run_id, thread_id, life in plan.threads:
                    self._threads.queue_enter(
                        pipe, run_id, thread_id, strategy, now=plan.now, life=life
                    )
                replies[:] = pipe.execute()

        replies: list[Any] = []
        self._write(write, plan.probe)
        for entered in entered_runs(plan.threads, replies):
            if entered.verdict == "waiting" and strategy in ("interrupt", "rollback"):
                self._stop_holder(entered.holder, rollback=strategy == "rollback")
        raise_busy(plan.threads, replies)

    def _write(self, write: Callable[[], None], probe: tuple[str, str]) -> None:
        """One enqueue, waited for by a replica when asked (REPLICA_ACKS), Redis errors ours."""
        with translated("cannot enqueue on Redis"):
            if self.settings.replica_acks:
                durable.enqueue(self._redis, self.settings, write, *probe)
            else:
                write()

    def _stop_holder(self, holder: str, *, rollback: bool) -> None:
        """Strategy interrupt / rollback: the new run is first in line; stop the one running."""
        if rollback:
            with translated("cannot request a rollback on Redis"):
                self._redis.set(*rollback_record(self.protocol, holder))
        with contextlib.suppress(RunNotFound):
            self.cancel(holder)

    def status(self, run_id: str) -> RunStatus:
        """Raises: RunNotFound for an unknown or expired id."""

        def read() -> RunStatus:
            status = _existing(self.protocol, self._redis.get(keys.status(run_id)), run_id)
            # A queued run no worker could verify is recorded as failed here too.
            return rejections.settle(self._redis, self.protocol, status)

        with translated("cannot read status from Redis"):
            return durable.read(self.settings, read)

    def webhook(self, run_id: str) -> WebhookDelivery | None:
        """The run's verified webhook record, None without one (store/webhooks.py)."""
        with translated("cannot read webhook from Redis"):
            return webhooks.read(self._redis, self.protocol.signer, run_id)

    def thread_position(self, run_id: str) -> int | None:
        """See `RemoteRun.thread_position`."""
        with translated("cannot read the thread from Redis"):
            return threads.position(self._redis, run_id)

    def events(self, run_ids: Sequence[str], *, timeout: float | None) -> Iterator[Event]:
        """Yield verified events of `run_ids` as they arrive, until each has an outcome
        (through the process's one stream reader, producer/reader.py).

        Raises:
            WaitTimeout: `timeout` seconds passed first (the runs go on).
            BrokerUnavailable: Redis went away while waiting.
        """
        return waiting.events(self._redis, self._reader, self.protocol, run_ids, timeout=timeout)

    def outcome(self, run_id: str, *, timeout: float | None) -> Outcome:
        """The one wait for a run's end: its verified outcome, whatever it streamed before.

        Raises:
            WaitTimeout: `timeout` seconds passed first (the run goes on).
            BrokerUnavailable: Redis went away while waiting.
        """
        for event in self.events([run_id], timeout=timeout):
            if event.outcome is not None:
                return event.outcome
        raise RunnableK8sError(f"run {run_id} ended without an outcome")

    def cancel(self, run_id: str) -> RunStatus:
        """Cancel a run: a queued one is marked cancelled at once and never starts; a running
        one is cancelled by its worker. Returns the status before cancelling.

        Raises:
            RunNotFound: no such run.
        """
        with translated("cannot cancel on Redis"), self._redis.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_RETRIES):
                try:
                    pipe.watch(keys.status(run_id))  # type: ignore[no-untyped-call]
                    status = _existing(self.protocol, pipe.get(keys.status(run_id)), run_id)
                    pipe.multi()
                    _queue_cancel(pipe, self.protocol, status)
                    if status.state == "queued":  # out of its thread's line (if any)
                        self._threads.queue_leave(pipe, run_id, now=time.time())
                    pipe.execute()
                    return status
                except WatchError:
                    continue
        raise BrokerUnavailable(f"run {run_id} changed state too often to cancel")


# One client per settings: connection pools are shared by every RunnableK8s built from the
# same settings (producer/aclient.py keeps the asyncio ones, per event loop).
_clients: dict[Settings, Client] = {}


def client_for(settings: Settings) -> Client:
    client = _clients.get(settings)
    if client is None:
        client = _clients.setdefault(settings, Client(settings))
    return client
