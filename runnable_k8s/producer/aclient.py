"""The asyncio twin of `client.Client`: awaiting an outcome holds no thread.

Every decision is `client.py`'s, `waiting.py`'s (the waits on the shared stream reader) or
the store's (`Submission`); only the I/O is awaited here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import WatchError

from runnable_k8s import connections
from runnable_k8s.errors import BrokerUnavailable, RunnableK8sError, RunNotFound
from runnable_k8s.producer import durable, reader, rejections, waiting
from runnable_k8s.producer.client import (
    _CONNECTION,
    _WATCH_RETRIES,
    _existing,
    client_for,
)
from runnable_k8s.producer.redis_errors import translated
from runnable_k8s.producer.stream_entries import Event
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
        self._reader = reader.AsyncReader(self._redis)

    async def aclose(self) -> None:
        try:
            await self._reader.aclose()
        finally:
            await connections.aclose(self._redis)

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

    def events(self, run_ids: Sequence[str], *, timeout: float | None) -> AsyncIterator[Event]:
        """See `Client.events` (this event loop's one stream reader, producer/reader.py)."""
        return waiting.aevents(self._redis, self._reader, self.protocol, run_ids, timeout=timeout)

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


# One client per settings and event loop: its connection pool dies with its loop. Each
# entry holds its loop strongly (the pool's sockets belong to it), so entries are dropped by
# hand: when the loop shuts down (`_closer`) or, for a loop closed without that, at the
# next call from any other loop.
_async_clients: dict[asyncio.AbstractEventLoop, _PerLoop] = {}
_async_clients_lock = threading.Lock()  # loops of several threads share the table


class _PerLoop:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.clients: dict[Settings, AsyncClient] = {}
        self.closer = _closer(self)
        _start(self.closer)


async def _closer(per_loop: _PerLoop) -> AsyncIterator[None]:
    """Closes a loop's clients while the loop can still await it: `asyncio.run` (and
    pytest-asyncio, and every runner that calls `loop.shutdown_asyncgens()`) closes each
    live async generator first in this loop before it closes the loop, so a script that
    calls `asyncio.run(remote.ainvoke(...))` again and again does not leave a connection
    open per call."""
    try:
        yield
    finally:
        await _after_the_other_generators()
        with _async_clients_lock:
            if _async_clients.get(per_loop.loop) is per_loop:
                del _async_clients[per_loop.loop]
        for client in list(per_loop.clients.values()):
            with contextlib.suppress(Exception):
                await client.aclose()


async def _after_the_other_generators() -> None:
    """`shutdown_asyncgens` closes every unfinished generator of the loop at once, each in a
    task of its own, this closer among them: a caller's generator whose cleanup still awaits
    this loop's clients (cancels the run it stopped following, say) would otherwise find them
    closed under it (the connection it opens again is left open), or gone (a new client, made
    after the shutdown, that nothing closes, and a `ResourceWarning`). So they close last."""
    me = asyncio.current_task()
    closing = [
        task
        for task in asyncio.all_tasks()
        if task is not me and type(task.get_coro()).__name__ == "async_generator_athrow"
    ]
    if closing:
        await asyncio.wait(closing)


def _start(generator: AsyncIterator[None]) -> None:
    # The first step runs here, in the calling loop, up to the `yield` (no await before it):
    # that registers the generator with the running loop's async-generator hooks, which is
    # what makes `shutdown_asyncgens` close it. The loop holds it weakly; `_PerLoop` holds it.
    step = generator.__anext__()
    try:
        step.send(None)  # type: ignore[attr-defined]
    except StopIteration:
        return
    raise RuntimeError("the loop closer awaited before its first yield")  # pragma: no cover


def async_client_for(settings: Settings) -> AsyncClient:
    loop = asyncio.get_running_loop()
    with _async_clients_lock:
        per_loop = _async_clients.get(loop)
        if per_loop is None:
            for closed in [other for other in _async_clients if other.is_closed()]:
                # Closed without shutting its generators down: nothing can await on it any
                # more, so its sockets are closed without it.
                for stale in _async_clients.pop(closed).clients.values():
                    connections.abandon(stale._redis)
            per_loop = _async_clients[loop] = _PerLoop(loop)
    client = per_loop.clients.get(settings)
    if client is None:
        client = AsyncClient(settings, client_for(settings).protocol)
        per_loop.clients[settings] = client
    return client


def _after_fork_in_child() -> None:
    # Only the forking thread goes on in the child: a lock held at the fork was another
    # thread's, and the child's copy would stay held for ever (a lock may be released by any
    # thread).
    if _async_clients_lock.locked():
        _async_clients_lock.release()


os.register_at_fork(after_in_child=_after_fork_in_child)
