"""One stream reader per client: every run the process waits on, read by one blocking XREAD.

An asyncio task per event loop (`AsyncReader`, one per `AsyncClient`) or a daemon thread
(`SyncReader`, one per `Client`, shared by its threads) keeps a single `XREAD BLOCK` on every
stream anyone waits on (producer/waiting.py), on one connection of its own, and puts each
waiter's entries in its inbox. So a process holds one connection for all its waits (not one per
wait: a redis-py pool holds 100), and one command brings the entries of every stream that has
any, all of them (no COUNT). The reader runs only while someone waits: no command otherwise.

A wait whose streams the read in flight misses (a new one) wakes the reader with `CLIENT
UNBLOCK` (on another connection; the XREAD returns empty and the next covers every stream;
only while the reader's connection is the one the id was read on, so at worst, right after a
Redis restart renumbered the clients, another client's blocking read returns early, as if
it had timed out, which every blocking reader handles);
across an outage the reader reconnects (for up to 30 s, `waiting.Outage`) and reads on from
its cursors, so nothing is skipped or repeated. A key that is not a stream (anyone who can
write to Redis can put one there) fails its own waiters' waits, not everyone's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Final

import redis
import redis.asyncio as aredis
from redis.exceptions import RedisError, ResponseError

from runnable_k8s.connections import REDIS_ERRORS
from runnable_k8s.producer.waiting import (
    MAX_BLOCK_MS,
    Outage,
    Registry,
    Subscription,
    lost,
    parse_reply,
)

# CLIENT UNBLOCK tries (1 ms apart) while the read it targets has not reached Redis yet.
_UNBLOCK_TRIES: Final = 50
# The block of each read where CLIENT ID or CLIENT UNBLOCK is refused (an ACL without them):
# a new wait then joins the reads within this long, at the cost of a read this often.
_FALLBACK_BLOCK_MS: Final = 50
_NOT_STREAMS: Final = frozenset({b"stream", b"none", "stream", "none"})


async def _non_streams(client: aredis.Redis, streams: dict[str, str]) -> list[str]:
    """After Redis refused an XREAD: the keys that are not streams (anyone who can write to
    Redis can put another type there); that caller's wait fails, not everyone's."""
    kinds = [await client.type(key) for key in streams]
    return [key for key, kind in zip(streams, kinds, strict=True) if kind not in _NOT_STREAMS]


class AsyncReader:
    """The reader of one event loop (one per `AsyncClient`): a task that runs while anyone
    waits, on a connection of its own from the client's pool."""

    def __init__(self, client: aredis.Redis) -> None:
        self._client = client
        self._registry = Registry()
        self._task: asyncio.Task[None] | None = None
        self._waker: asyncio.Task[None] | None = None
        self._wanted = False
        self._conn: Any = None
        self._id: int | None = None
        self._round = 0
        self._block = MAX_BLOCK_MS

    def subscribe(self, stream_keys: Sequence[str]) -> Subscription:
        sub = Subscription(stream_keys, asyncio.Queue())
        if self._registry.add(sub):
            self._wake()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._registry.remove(sub)
        if self._registry.empty() and self._registry.reading is not None:
            self._wake()  # the read in flight serves nobody: end it, and the task

    def taken(self, sub: Subscription) -> None:
        if not self._registry.resume(sub):
            return
        if self._registry.reading is not None:
            self._wake()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        for task in (self._task, self._waker):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await self._drop()

    def _wake(self) -> None:
        self._wanted = True
        if self._waker is None or self._waker.done():
            self._waker = asyncio.get_running_loop().create_task(self._unblock())

    async def _unblock(self) -> None:
        while self._wanted:
            self._wanted = False
            round_, client_id = self._round, self._id
            for _ in range(_UNBLOCK_TRIES):
                if (
                    self._registry.reading is None
                    or self._round != round_
                    or client_id is None
                    or client_id < 0
                    or self._id != client_id
                ):
                    break  # the next read is computed after the change: nothing to wake
                try:
                    if await self._client.client_unblock(client_id):
                        break
                except ResponseError:
                    self._block = _FALLBACK_BLOCK_MS
                    break
                except REDIS_ERRORS:
                    break  # the reader reconnects, and reads every stream again
                await asyncio.sleep(0.001)  # the XREAD has not reached Redis yet

    async def _connection(self) -> Any:
        if self._conn is None:
            self._conn = await self._client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        if self._id is None:
            await self._conn.send_command("CLIENT", "ID")
            try:
                self._id = int(await self._conn.read_response())
            except ResponseError:
                self._id, self._block = -1, _FALLBACK_BLOCK_MS
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn, self._id = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()
            await self._client.connection_pool.release(conn)

    async def _read(self) -> Any:
        """One XREAD of every stream waited on."""
        conn = await self._connection()
        streams = self._registry.streams()
        self._registry.reading = streams
        self._round += 1
        try:
            await conn.send_command(
                "XREAD", "BLOCK", self._block, "STREAMS", *streams, *streams.values()
            )
            return await conn.read_response()
        except ResponseError as exc:
            self._registry.reading = None
            bad = await _non_streams(self._client, streams)
            self._registry.fail(lost(exc), bad or None)
            return None
        finally:
            self._registry.reading = None

    async def _run(self) -> None:
        outage = Outage()
        try:
            # Ends when nobody waits (or every waiter is paused: `taken` starts it again).
            while self._registry.streams():
                try:
                    raw = await self._read()
                except REDIS_ERRORS as exc:
                    await self._drop()
                    try:
                        await asyncio.sleep(outage.pause(exc))
                    except REDIS_ERRORS:
                        self._registry.fail(lost(exc))
                        return
                    continue
                outage.over()
                self._registry.dispatch(parse_reply(raw))
                # Let the waiters run first: one that got its outcome leaves before the next
                # read, which then does not include its stream.
                await asyncio.sleep(0)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self._registry.fail(lost(exc) if isinstance(exc, RedisError) else exc)
            await self._drop()
            raise


class SyncReader:
    """The reader of a blocking client (one per `Client`, shared by its threads): a daemon
    thread on a connection of its own, idle (no command) while nobody waits."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._round = 0
        self._block = MAX_BLOCK_MS
        self._forked()
        _sync_readers.add(self)

    def _forked(self) -> None:
        """A fresh start, also in a forked child: the thread stayed in the parent, its lock may
        have been held there at the fork (and would stay held in the child for ever), and its
        connection's socket is the parent's."""
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._registry = Registry()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._id: int | None = None

    def subscribe(self, stream_keys: Sequence[str]) -> Subscription:
        sub = Subscription(stream_keys, queue.Queue())
        with self._lock:
            missed = self._registry.add(sub)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="runnable-k8s-stream-reader", daemon=True
                )
                self._thread.start()
            self._idle.notify()
        if missed:
            self._wake()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._registry.remove(sub)

    def taken(self, sub: Subscription) -> None:
        with self._lock:
            wake = self._registry.resume(sub) and self._registry.reading is not None
            self._idle.notify()
        if wake:
            self._wake()

    def _wake(self) -> None:
        with self._lock:
            round_, client_id = self._round, self._id
        for _ in range(_UNBLOCK_TRIES):
            with self._lock:
                if (
                    self._registry.reading is None
                    or self._round != round_
                    or client_id is None
                    or client_id < 0
                    or self._id != client_id
                ):
                    return  # the next read is computed after the change: nothing to wake
            try:
                if self._client.client_unblock(client_id):
                    return
            except ResponseError:
                self._block = _FALLBACK_BLOCK_MS
                return
            except REDIS_ERRORS:
                return  # the reader reconnects, and reads every stream again
            time.sleep(0.001)  # the XREAD has not reached Redis yet

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self._client.connection_pool.get_connection()
        if self._id is None:
            self._conn.send_command("CLIENT", "ID")
            try:
                self._id = int(self._conn.read_response())
            except ResponseError:
                self._id, self._block = -1, _FALLBACK_BLOCK_MS
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        with self._lock:
            self._id = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.disconnect()
            self._client.connection_pool.release(conn)

    def _read(self) -> Any:
        """One XREAD of every stream waited on (None: nobody to read for right now)."""
        conn = self._connection()
        with self._lock:
            streams = self._registry.streams()
            if not streams:
                return None
            self._registry.reading = streams
            self._round += 1
        try:
            conn.send_command("XREAD", "BLOCK", self._block, "STREAMS", *streams, *streams.values())
            return conn.read_response()
        except ResponseError as exc:
            kinds = [self._client.type(key) for key in streams]
            bad = [k for k, kind in zip(streams, kinds, strict=True) if kind not in _NOT_STREAMS]
            with self._lock:
                self._registry.fail(lost(exc), bad or None)
            return None
        finally:
            with self._lock:
                self._registry.reading = None

    def _run(self) -> None:
        outage = Outage()
        try:
            while True:
                with self._lock:
                    while not self._registry.streams():
                        self._idle.wait()
                try:
                    raw = self._read()
                except REDIS_ERRORS as exc:
                    self._drop()
                    try:
                        time.sleep(outage.pause(exc))
                    except REDIS_ERRORS:
                        with self._lock:
                            self._registry.fail(lost(exc))
                        outage = Outage()
                    continue
                outage.over()
                with self._lock:
                    self._registry.dispatch(parse_reply(raw))
        except BaseException as exc:
            # Never die silently: every waiter gets the error; the next subscribe starts anew.
            with self._lock:
                self._registry.fail(lost(exc) if isinstance(exc, RedisError) else exc)
            self._drop()
            raise


_sync_readers: weakref.WeakSet[SyncReader] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for reader in list(_sync_readers):
        reader._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
