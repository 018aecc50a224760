"""The producer's side of Redis: enqueue runs, read statuses, wait for outcomes and chunks.

Waiting never polls: every wait subscribes to its runs' event streams, and the process's one
stream reader (producer/reader.py, one blocking XREAD for all of them) hands each its entries
the moment a worker appends them (producer/waiting.py). Only a run with a rejection notice in
its stream is looked at again between waits, until the notice is settled
(producer/rejections.py). The asyncio client (aclient.py) shares every decision made here
(`waiting`, `stream_entries`, and the store's `Submission`); only the I/O differs.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from redis.exceptions import WatchError

from runnable_k8s import connections
from runnable_k8s.errors import BrokerUnavailable, RunnableK8sError, RunNotFound
from runnable_k8s.producer import durable, reader, rejections, waiting
from runnable_k8s.producer.redis_errors import translated
from runnable_k8s.producer.stream_entries import Event
from runnable_k8s.producer.thread_submit import raise_busy, rollback_record
from runnable_k8s.protocol.messages import Outcome, Protocol, RunRequest, RunStatus
from runnable_k8s.protocol.webhook import WebhookDelivery
from runnable_k8s.settings import Settings
from runnable_k8s.store import keys, threads, webhooks
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
            # hiredis parses replies fast; its packer copies every argument (see CommandPacker).
            command_packer=connections.CommandPacker(),
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
        """Enqueue runs: statuses and messages in one script (large bodies just before it), with
        `records` (key, signed value, ttl s) beside them (e.g. a retry's link). A run with a
        `configurable.thread_id` waits for its thread as `strategy` says (store/threads.py).

        Raises:
            BrokerUnavailable: Redis is unreachable; nothing was enqueued.
            ThreadBusy: strategy "reject" and a run's thread was held; none of the runs on a
                busy thread was enqueued.
        """
        # One script for every run, on a thread or not (store/submit.py, store/threads.py).
        submission = Submission(self.protocol, requests, records, strategy=strategy)
        replies: list[Any] = []
        self._write(lambda: replies.append(self._enqueue(submission)), submission.probe)
        entered = submission.entered(replies[0] if replies else None)
        for run in entered:
            if run.verdict == "waiting" and strategy in ("interrupt", "rollback"):
                self._stop_holder(run.holder, rollback=strategy == "rollback")
        raise_busy(entered)

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
