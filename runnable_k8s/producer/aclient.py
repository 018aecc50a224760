"""The asyncio twin of `client.Client`: awaiting an outcome holds no thread.

Every decision is `client.py`'s (`_Outage`, `_block_ms`, `stream_entries`) or the store's
(`Submission`); only the I/O is awaited here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import WatchError

from runnable_k8s import connections
from runnable_k8s.connections import REDIS_ERRORS
from runnable_k8s.errors import BrokerUnavailable, RunnableK8sError, RunNotFound, WaitTimeout
from runnable_k8s.producer import durable, rejections
from runnable_k8s.producer.client import (
    _CONNECTION,
    _WATCH_RETRIES,
    _block_ms,
    _existing,
    _Outage,
    client_for,
)
from runnable_k8s.producer.redis_errors import translated
from runnable_k8s.producer.stream_entries import Event, parse_entries
from runnable_k8s.producer.thread_submit import raise_busy, rollback_record
from runnable_k8s.protocol.messages import Outcome, Protocol, RunRequest, RunStatus
from runnable_k8s.settings import Settings
from runnable_k8s.store import keys, threads
from runnable_k8s.store.cancel import queue_cancel as _queue_cancel
from runnable_k8s.store.submit import AsyncEnqueuer, Submission
from runnable_k8s.store.threads import Strategy, TransactionThreads


class AsyncClient:
    """asyncio producer client: awaiting an outcome holds no thread. One per event loop."""

    def __init__(self, settings: Settings, protocol: Protocol) -> None:
        self.settings = settings
        self.protocol = protocol
        self._redis = connections.async_client(settings.require_redis_url(), **_CONNECTION)
        self._threads = TransactionThreads(self._redis, settings)
        self._enqueue = AsyncEnqueuer(self._redis)

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def submit(
        self, requests: Sequence[RunRequest], *, strategy: Strategy = threads.DEFAULT
    ) -> None:
        submission = Submission(self.protocol, requests, strategy=strategy)
        replies: list[Any] = []

        async def write() -> None:
            replies.append(await self._enqueue(submission))

        await self._write(write, submission.probe)
        entered = submission.entered(replies[0] if replies else None)
        for run in entered:
            if run.verdict == "waiting" and strategy in ("interrupt", "rollback"):
                await self._stop_holder(run.holder, rollback=strategy == "rollback")
        raise_busy(entered)

    async def _write(self, write: Callable[[], Awaitable[None]], probe: tuple[str, str]) -> None:
        """One enqueue, waited for by a replica when asked (REPLICA_ACKS), Redis errors ours."""
        with translated("cannot enqueue on Redis"):
            if self.settings.replica_acks:
                await durable.aenqueue(self._redis, self.settings, write, *probe)
            else:
                await write()

    async def _stop_holder(self, holder: str, *, rollback: bool) -> None:
        if rollback:
            with translated("cannot request a rollback on Redis"):
                await self._redis.set(*rollback_record(self.protocol, holder))
        with contextlib.suppress(RunNotFound):
            await self.cancel(holder)

    async def status(self, run_id: str) -> RunStatus:

        async def read() -> RunStatus:
            raw = await self._redis.get(keys.status(run_id))
            status = _existing(self.protocol, raw, run_id)
            return await rejections.asettle(self._redis, self.protocol, status)

        with translated("cannot read status from Redis"):
            return await durable.aread(self.settings, read)

    async def events(
        self, run_ids: Sequence[str], *, timeout: float | None
    ) -> AsyncIterator[Event]:
        deadline = None if timeout is None else time.monotonic() + timeout
        cursors = {keys.events(r): "0-0" for r in run_ids}
        seen: dict[str, int] = {}
        # A notice that no worker could verify a run shortens the blocks until it is settled.
        watch = rejections.Watch(self.protocol)
        outage = _Outage()
        with translated("lost Redis while waiting"):
            while cursors:
                try:
                    await rejections.acheck_due(self._redis, watch)
                    block = watch.wait_ms(_block_ms(deadline))
                    if block < 0:
                        pending = [k.split("{", 1)[1].split("}", 1)[0] for k in cursors]
                        raise WaitTimeout(
                            f"no result after {timeout} s for run(s) {', '.join(pending[:5])}",
                            run_id=pending[0],
                        )
                    response = await self._redis.xread(dict[Any, Any](cursors), block=block)
                except REDIS_ERRORS as exc:
                    await asyncio.sleep(outage.pause(exc))
                    continue
                outage.over()
                for event in parse_entries(self.protocol, response, cursors, seen, watch):
                    if event.outcome is not None:
                        cursors.pop(keys.events(event.run_id), None)
                        watch.forget(event.run_id)
                    yield event

    async def outcome(self, run_id: str, *, timeout: float | None) -> Outcome:
        """The asyncio twin of `Client.outcome`."""
        async for event in self.events([run_id], timeout=timeout):
            if event.outcome is not None:
                return event.outcome
        raise RunnableK8sError(f"run {run_id} ended without an outcome")

    async def cancel(self, run_id: str) -> RunStatus:
        with translated("cannot cancel on Redis"):
            async with self._redis.pipeline(transaction=True) as pipe:
                for _ in range(_WATCH_RETRIES):
                    try:
                        await pipe.watch(keys.status(run_id))
                        raw = await pipe.get(keys.status(run_id))
                        status = _existing(self.protocol, raw, run_id)
                        pipe.multi()  # type: ignore[no-untyped-call]
                        _queue_cancel(pipe, self.protocol, status)
                        if status.state == "queued":  # out of its thread's line (if any)
                            await self._threads.queue_leave(pipe, run_id, now=time.time())
                        await pipe.execute()
                        return status
                    except WatchError:
                        continue
        raise BrokerUnavailable(f"run {run_id} changed state too often to cancel")


# One client per settings and event loop: its connection pool dies with its loop.
_async_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[Settings, AsyncClient]
] = weakref.WeakKeyDictionary()


def async_client_for(settings: Settings) -> AsyncClient:
    loop = asyncio.get_running_loop()
    per_loop = _async_clients.setdefault(loop, {})
    client = per_loop.get(settings)
    if client is None:
        client = AsyncClient(settings, client_for(settings).protocol)
        per_loop[settings] = client
    return client
