"""Writing a run's stream: signed batches appended exactly once, several chunks per entry.

`Batcher` takes items (encoded chunks and events) as the runnable produces them. The first
goes out at once; those produced while a write is in flight, or within the spacing (2 ms,
growing to 16 ms while the runnable keeps producing faster than entries leave) of the last
entry, go out together in the next entry, so a slow model gets each token out as it comes and
a fast one fills entries. Each item keeps its own signed position inside its entry
(protocol/stream.py).

`EntryWriter` appends one sealed batch: across a Redis blip the write is retried, and a retry
first looks for the entry the try before may have appended, so no batch is ever appended twice.
A retry also checks that the stream still holds the last entry it appended: Redis replicates
asynchronously, so a failover can lose entries the old master had acknowledged, and the writer
appends those again (the same signed bytes: a reader that had them skips the replay) before it
goes on; a reader would otherwise meet a gap and refuse the stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Final, Protocol

import redis.asyncio as aredis

from runnable_k8s.errors import MessageRejected, RunnableK8sError
from runnable_k8s.protocol import messages as wire
from runnable_k8s.protocol import stream
from runnable_k8s.settings import Settings
from runnable_k8s.store import keys, streams
from runnable_k8s.worker.outage import REDIS_ERRORS, ride_out
from runnable_k8s.worker.stream_appender import appender_for

# Rounds of "forged entries removed, first entry tried again" before giving up.
_FIRST_TRIES: Final = 3
# Items in one entry at most: bounds what one reader parses per entry and the first entry's
# XRANGE scan of a stream a lost delivery left behind.
_MAX_ITEMS: Final = 512
# Past this many items waiting (or twice the body limit in bytes), the runnable waits for the
# write in flight: a model far faster than Redis must not buffer without bound.
_MAX_PENDING: Final = 4 * _MAX_ITEMS
# How long a runnable that never awaits (a model yielding buffered tokens, a CPU-bound
# step) keeps the event loop while a write is in flight, before `put` gives the loop a turn
# to finish that write and send the next. Not a wait: nothing is delayed while the runnable
# awaits anything, and the first item of a burst goes out at once. Without it, such a runnable
# would give the loop a turn per item, each reply would be read before the next item existed,
# and every item would cost a write of its own (worker, Redis and reader CPU alike).
_TURN_S: Final = 0.001
# Entries of one run leave at most this often. Why not only "everything produced while a write
# is in flight": LangChain's `astream` gives the event loop about a dozen turns per chunk (tee,
# callbacks), so a write's reply is read before the next chunk exists, and every chunk went
# alone (measured: 1,836 entries for 2,000 tokens), each costing the worker a write, Redis a
# command and every reader an XREAD. An item that comes more than this after the last entry
# left (the first token; a real model's token every 5 to 20 ms) goes at once; only the items
# of a burst wait, at most this long, and share an entry.
_SPACING_S: Final = 0.002
# While the runnable keeps producing faster than entries leave (an entry of `_GROW_AT` items
# or more), the spacing doubles, up to this: at 2 ms a model yielding 10,000 tokens/s still
# cost an XADD and a reader's XREAD per 6 tokens (0.45 commands per token, measured); at
# 16 ms it is one per ~100. It drops back to `_SPACING_S` as soon as an entry leaves with one
# item or the runnable pauses longer than the spacing, so a real model (a token every 5 to
# 20 ms, one item per entry) never waits, and the last entry of a stream never waits at all.
_MAX_SPACING_S: Final = 0.016
_GROW_AT: Final = 4
# Entries a writer keeps after appending them, to append again if a failover loses them (the
# newest, at most this many and this many bytes of sealed messages): a replica lags the master
# by milliseconds, and entries lost further back end the run "interrupted" instead. 64 entries
# is a second or more of any stream (entries leave at most every 16 ms, or per token of a real
# model); 256 cost S3's worker about 100 MB (a one-token entry is about 400 bytes kept).
_KEEP_ENTRIES: Final = 64
_KEEP_BYTES: Final = 4 * 1024 * 1024
# How long a cancelled run waits for its write in flight (so the outcome counts exactly the
# entries in Redis) before abandoning it.
_SETTLE_S: Final = 5.0

Batch = list[tuple[stream.ItemKind, bytes]]

log = logging.getLogger("runnable_k8s.worker")


@dataclass(frozen=True, slots=True)
class _Kept:
    """An entry as appended: its first item's position, its kind, its sealed message."""

    seq: int
    kind: stream.EntryKind
    sealed: bytes


class StreamHost(Protocol):
    """What a stream is written with (the worker's executor). A protocol, not the executor's
    class: the executor imports this module, and the stream writer must not import it back."""

    @property
    def protocol(self) -> wire.Protocol: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def redis(self) -> aredis.Redis: ...


@dataclass
class Progress:
    """How many entries a run has published (a stream that has begun cannot be retried), and
    the error that made publishing give up, if any: that one is the worker's, never the
    runnable's (a runnable that raises a Redis error of its own fails its run)."""

    published: int = 0
    own_error: BaseException | None = None


class StreamInterrupted(RunnableK8sError):
    """This run's stream already holds another delivery's entries: the run ends "interrupted"
    after the `entries` (items) the reader has (never the runnable's failure)."""

    def __init__(self, entries: int) -> None:
        super().__init__(f"the stream already holds {entries} entries of an earlier delivery")
        self.entries = entries


def _id(raw: Any) -> bytes:
    return raw if isinstance(raw, bytes) else str(raw).encode()


class EntryWriter:
    """Appends sealed batches to one run's stream, counting items in `progress`."""

    def __init__(self, executor: StreamHost, run_id: str, progress: Progress) -> None:
        self._executor = executor
        self._run_id = run_id
        self._progress = progress
        self._stream = keys.events(run_id)
        self._last: bytes | None = None  # id of the last entry appended
        self._kept: collections.deque[_Kept] = collections.deque()
        self._kept_bytes = 0

    async def append(self, items: Batch) -> None:
        seq = self._progress.published
        sealed = self._executor.protocol.seal_batch(self._run_id, seq, items)
        kind = stream.EntryKind(items[0][0].value)
        tries = 0

        async def append_once() -> bytes:
            nonlocal tries
            tries += 1
            if tries > 1:
                # Redis went away: if it came back as a new master, it may lack entries.
                await self._restore_lost(seq)
                # The try before may have been applied, its reply lost: never append twice.
                found = await self._find(sealed, seq)
                if found is not None:
                    return found
            return await self._add(kind, sealed, seq)

        try:
            # Across a Redis blip the run waits for Redis, as its outcome would.
            self._last = await ride_out(
                append_once,
                within=self._executor.settings.effective_visibility_timeout,
                what="streaming",
                run_id=self._run_id,
            )
        except (*REDIS_ERRORS, StreamInterrupted) as exc:
            self._progress.own_error = exc
            raise
        self._progress.published += len(items)
        self._keep(_Kept(seq, kind, sealed))

    def _keep(self, entry: _Kept) -> None:
        self._kept.append(entry)
        self._kept_bytes += len(entry.sealed)
        while len(self._kept) > _KEEP_ENTRIES or self._kept_bytes > _KEEP_BYTES:
            self._kept_bytes -= len(self._kept.popleft().sealed)

    async def _restore_lost(self, seq: int) -> None:
        """Append again the entries a failover lost: the stream no longer holds the last entry
        this writer appended (replication is ordered: if that one survived, all before it
        did). Raises StreamInterrupted if they are no longer kept."""
        if self._last is None:
            return  # nothing appended yet: the first entry's script looks for itself
        redis = self._executor.redis
        if await redis.xrange(self._stream, self._last, self._last):
            return
        tail = await self._tail()
        missing = [entry for entry in self._kept if entry.seq >= tail]
        if not missing or missing[0].seq != tail:
            raise StreamInterrupted(tail)  # the gap reaches past what is kept
        for entry in missing:
            self._last = await self._add(entry.kind, entry.sealed, entry.seq)
        log.warning(
            "appended again %d stream entries of run=%s that Redis lost (a failover): "
            "items %d to %d",
            len(missing),
            self._run_id,
            tail,
            seq - 1,
        )

    async def _tail(self) -> int:
        """The position after the last signed item of this run in its stream (0: none)."""
        redis = self._executor.redis
        end: bytes = b"+"
        while True:
            page: list[Any] = await redis.xrevrange(self._stream, end, "-", count=64) or []
            for _, fields in page:
                if stream.entry_kind(fields) not in stream.BATCH_KINDS:
                    continue
                try:
                    items = self._executor.protocol.open_batch(
                        stream.entry_message(fields), self._run_id
                    )
                except MessageRejected:
                    continue  # forged: not this run's
                return items[-1].seq + 1
            if len(page) < 64:
                return 0
            end = b"(" + _id(page[-1][0])

    async def _add(self, kind: stream.EntryKind, sealed: bytes, seq: int) -> bytes:
        redis = self._executor.redis
        if seq > 0:  # the usual case: one plain XADD, sent with the other runs' (`Appender`)
            fields = stream.signed_fields(kind, sealed)
            return _id(await appender_for(redis).xadd(self._stream, fields))
        ttl = int(self._executor.settings.result_ttl)
        for _ in range(_FIRST_TRIES):
            reply = await streams.append_first(redis, self._stream, kind, sealed, ttl)
            if not isinstance(reply, int):
                return reply
            # Redis cannot check signatures: the script counted chunk-like entries, which
            # anyone who can write to Redis can add. Only signed entries of this run are an
            # earlier delivery's (its worker was lost mid-stream: going on, or starting over,
            # would show the reader chunks twice); the rest go, and the first entry is tried
            # again.
            earlier = await self._earlier()
            if earlier:
                raise StreamInterrupted(earlier)
        raise StreamInterrupted(0)

    def _items(self, fields: Any) -> int:
        """How many signed items of this run a stream entry (its fields) holds; 0 for anything
        that is not a signed batch of this run."""
        if stream.entry_kind(fields) not in stream.BATCH_KINDS:
            return 0
        try:
            items = self._executor.protocol.open_batch(stream.entry_message(fields), self._run_id)
        except MessageRejected:
            return 0
        return len(items)

    async def _earlier(self) -> int:
        """The signed items of this run already in its stream; unsigned chunk-like entries
        (forged: no worker writes them) are deleted by this lease holder."""
        redis = self._executor.redis
        genuine, forged = 0, []
        entries: list[Any] = await redis.xrange(self._stream, "-", "+") or []
        for entry, fields in entries:
            if stream.entry_kind(fields) not in stream.BATCH_KINDS:
                continue  # a rejection notice, or an outcome: not a chunk
            items = self._items(fields)
            if items:
                genuine += items
            else:
                forged.append(_id(entry))
        if forged:
            await redis.xdel(self._stream, *forged)
        return genuine

    async def _find(self, sealed: bytes, seq: int) -> bytes | None:
        """The id of the entry holding `sealed`, if the try before appended it: then it is the
        one signed entry of this run after the last one this publisher knows it appended (only
        the run's lease holder appends; unsigned entries are anyone's). None if there is none;
        any other finding means another delivery streams here too."""
        start = b"-" if self._last is None else b"(" + self._last
        found = [
            (entry, fields, items)
            for entry, fields in await self._executor.redis.xrange(self._stream, start, "+") or []
            if (items := self._items(fields))
        ]
        if not found:
            return None
        if len(found) == 1 and stream.entry_message(found[0][1]) == sealed:
            return _id(found[0][0])
        raise StreamInterrupted(seq + sum(items for _, _, items in found))


class Batcher:
    """Items out as soon as possible: one write in flight at a time, and everything produced
    meanwhile in the next one. `close` (or `abandon`) must follow the last `put`."""

    def __init__(self, writer: EntryWriter, max_body_bytes: int) -> None:
        self._writer = writer
        self._max_body = max_body_bytes
        self._pending: Batch = []
        self._pending_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._turn = time.perf_counter()  # when the event loop last had a turn from `put`
        self._sent = -_SPACING_S  # when the last entry left
        self._spacing = _SPACING_S  # the current spacing (see `_MAX_SPACING_S`)
        self._closing = False  # no more items come: the last entry leaves at once

    async def put(self, kind: stream.ItemKind, data: bytes) -> None:
        """Queue one encoded item; raises the error that made an earlier write give up."""
        task = self._task
        if task is not None and task.done():
            self._task = None
            _raise_failure(task)
        self._pending.append((kind, data))
        self._pending_bytes += len(data)
        if self._task is None:
            # Nothing in flight: this item goes out now (the first token never waits), and
            # after a pause longer than the spacing, so do the next ones.
            if time.perf_counter() - self._sent > self._spacing:
                self._spacing = _SPACING_S
            self._task = asyncio.create_task(self._drain())
        elif len(self._pending) >= _MAX_PENDING or self._pending_bytes >= 2 * self._max_body:
            await asyncio.wait({self._task})
            self._turn = time.perf_counter()
            return
        elif time.perf_counter() - self._turn < _TURN_S:
            # A write is in flight and the runnable has had the loop for less than a turn:
            # it goes on producing, and what it produces joins the next entry.
            return
        # One turn of the event loop: the write gets on the wire, or its reply is read and
        # the next entry (everything produced meanwhile) sent, even when the runnable never
        # awaits anything itself. A runnable that awaits (a model on the network) gives the
        # loop its turns anyway.
        await asyncio.sleep(0)
        self._turn = time.perf_counter()

    async def close(self) -> None:
        """Publish everything queued; raises the error that made a write give up."""
        self._closing = True
        while self._task is not None or self._pending:
            if self._task is None:
                self._task = asyncio.create_task(self._drain())
            task = self._task
            await asyncio.wait({task})
            self._task = None
            _raise_failure(task)

    async def abandon(self) -> None:
        """The run ends without its queued items (cancelled, or a write gave up): the write in
        flight, if any, is waited for a moment so the published count matches Redis."""
        self._pending.clear()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait({task}, timeout=_SETTLE_S)
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _drain(self) -> None:
        while self._pending:
            # An entry left less than a spacing ago: this one leaves one spacing after it,
            # with everything produced by then (see `_SPACING_S`).
            rest = self._sent + self._spacing - time.perf_counter()
            if rest > 0 and not self._closing:
                await asyncio.sleep(rest)
            batch = self._take()
            if len(batch) >= _GROW_AT:
                self._spacing = min(2 * self._spacing, _MAX_SPACING_S)
            elif len(batch) == 1:
                self._spacing = _SPACING_S
            self._sent = time.perf_counter()
            await self._writer.append(batch)

    def _take(self) -> Batch:
        """The next entry's items: as many queued ones as fit one signed body (at least one:
        an item too large on its own is refused by the signer)."""
        budget = self._max_body - stream.batch_overhead(_MAX_ITEMS)
        count, size = 0, 0
        for _, data in self._pending[:_MAX_ITEMS]:
            if count and size + len(data) > budget:
                break
            count += 1
            size += len(data)
        batch, self._pending = self._pending[:count], self._pending[count:]
        self._pending_bytes -= size
        return batch


def _raise_failure(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        raise asyncio.CancelledError
    exc = task.exception()
    if exc is not None:
        raise exc
