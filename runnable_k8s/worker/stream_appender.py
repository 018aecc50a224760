"""The stream entries of every run streaming on one event loop, appended together (see
`Appender`); `stream_writer.EntryWriter` sends each entry after a run's first through it."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any


class Appender:
    """The XADDs of every run streaming on one event loop, sent together: those queued while a
    pipeline is in flight go in the next one (no waiting: the first goes at once). Many runs
    streaming at a real model's pace each send an entry per token (the spacing cannot batch
    tokens 20 ms apart); one pipeline for all of them costs one round trip, one socket write
    and one read instead of one each per entry, for the worker and for Redis alike. Each XADD
    keeps its own reply or error (`raise_on_error=False`), so a run's retry logic
    (`EntryWriter.append`) is the same as with a plain XADD; a lost connection fails every
    XADD of the pipeline, and each is retried by its own run, looking before it appends."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._queued: list[tuple[str, dict[Any, Any], asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def xadd(self, key: str, fields: dict[Any, Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((key, fields, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._send())
        return await future

    async def _send(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, fields, _ in batch:
                        pipe.xadd(key, fields)
                    replies = await pipe.execute(raise_on_error=False)
            except BaseException as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, _, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)


# One appender per Redis client (the worker has one per event loop).
_appenders: weakref.WeakKeyDictionary[Any, Appender] = weakref.WeakKeyDictionary()


def appender_for(redis: Any) -> Appender:
    """The appender of the Redis client `redis` (one per client)."""
    appender = _appenders.get(redis)
    if appender is None:
        appender = _appenders[redis] = Appender(redis)
    return appender
