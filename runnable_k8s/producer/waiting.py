"""A waiter's side of the stream reader: its subscription, and the loop that turns what the
reader hands it into verified events (`events`, `aevents`).

Every wait of a process (invoke, stream, batch, a handle's result) subscribes to its runs'
streams; the process's one reader (producer/reader.py) keeps a single `XREAD BLOCK` on all of
them and puts each waiter's entries in its inbox. What stays with each waiter: verification
(`stream_entries.parse_entries`: signed positions, outcomes, rejection notices), its deadline,
its rejection checks, and its cancellation (a waiter that stops unsubscribes; the others go
on). `Registry` holds every decision of the readers (which streams the next read covers, from
which cursor, who gets which entries, when a read in flight must be woken), without I/O, so the
asyncio and the threaded reader make the same ones.
"""

from __future__ import annotations

import asyncio
import queue
import time
import typing
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Final

import redis
import redis.asyncio as aredis
from redis.exceptions import RedisError

from runnable_k8s.connections import REDIS_ERRORS
from runnable_k8s.errors import BrokerError, WaitTimeout
from runnable_k8s.producer import rejections
from runnable_k8s.producer.redis_errors import translate
from runnable_k8s.producer.stream_entries import Event, Taken, parse_entries
from runnable_k8s.protocol import stream
from runnable_k8s.protocol.messages import Protocol
from runnable_k8s.store import keys

# Longest single XREAD block; the reader re-arms it while anyone waits.
MAX_BLOCK_MS: Final = 30_000
# How long a reader keeps reconnecting to a Redis that went away (a restart that reloads
# its append-only file, a failover) before its waiters fail with BrokerUnavailable.
_RECONNECT_FOR: Final = 30.0
# Replies waiting in one waiter's inbox before its streams are left out of the reads: a
# waiter that stops taking events costs memory in Redis (as before the shared reader), not
# in this process.
_MAX_QUEUED: Final = 64
_OUTCOME: Final = stream.EntryKind.OUTCOME.wire

Reply = list[tuple[str, list[tuple[str, dict[Any, Any]]]]]


class Reader(typing.Protocol):
    """What a wait needs of its process's reader (producer/reader.py, which imports this
    module: a protocol keeps the imports one way)."""

    def subscribe(self, stream_keys: Sequence[str]) -> Subscription: ...

    def unsubscribe(self, sub: Subscription) -> None: ...

    def taken(self, sub: Subscription) -> None: ...


def lost(exc: BaseException) -> BrokerError:
    """Our error for a wait that lost Redis (for longer than `_RECONNECT_FOR`) or whose read
    Redis refused (producer/redis_errors.py)."""
    return translate("lost Redis while waiting", exc) or BrokerError(
        f"lost Redis while waiting: {exc}"
    )


class Outage:
    """A wait that rides out a Redis blip: the stream is durable and the cursors say what was
    read, so reading again after a reconnect shows no gap and no repeat. Past
    `_RECONNECT_FOR` seconds without Redis the wait gives up with the last error."""

    def __init__(self) -> None:
        self._since: float | None = None
        self._delay = 0.1

    def pause(self, exc: Exception) -> float:
        now = time.monotonic()
        self._since = now if self._since is None else self._since
        if now - self._since > _RECONNECT_FOR:
            raise exc
        self._delay = min(self._delay * 2, 2.0)
        return self._delay

    def over(self) -> None:
        self._since, self._delay = None, 0.1


def _block_ms(deadline: float | None) -> int:
    if deadline is None:
        return MAX_BLOCK_MS
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return -1
    return max(1, min(MAX_BLOCK_MS, int(remaining * 1000)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _position(entry_id: str) -> tuple[int, int]:
    # Entry ids come from Redis itself ("<ms>-<seq>"); cursors start at "0-0".
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def parse_reply(raw: Any) -> Reply:
    """A raw XREAD reply (RESP2 list or RESP3 map) as [(stream key, [(entry id, fields)])]."""
    if not raw:
        return []
    found = []
    for key, entries in raw.items() if isinstance(raw, dict) else raw:
        parsed = []
        for entry_id, flat in entries or []:
            pairs = list(flat or [])
            parsed.append((_text(entry_id), dict(zip(pairs[::2], pairs[1::2], strict=False))))
        found.append((_text(key), parsed))
    return found


class Subscription:
    """One waiter's streams: the cursor of each (what the reader has handed it) and its inbox
    of `(stream key, entries)` replies or the error that ended the wait."""

    def __init__(self, stream_keys: Sequence[str], inbox: Any) -> None:
        self.cursors: dict[str, str] = dict.fromkeys(stream_keys, "0-0")
        self.inbox = inbox
        self.paused = False


class Registry:
    """Who waits on which stream, and what the read in flight covers. No I/O: the asyncio and
    the threaded reader share every decision (the threaded one holds its lock around it)."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = {}
        self.reading: dict[str, str] | None = None  # the streams of the XREAD in flight

    def add(self, sub: Subscription) -> bool:
        """Register `sub`; True when the read in flight misses some of its streams."""
        for key in sub.cursors:
            self._subs.setdefault(key, set()).add(sub)
        return self._missed(sub)

    def _missed(self, sub: Subscription) -> bool:
        reading = self.reading
        if reading is None or sub.paused:
            return False
        return any(
            key not in reading or _position(cursor) < _position(reading[key])
            for key, cursor in sub.cursors.items()
        )

    def remove(self, sub: Subscription) -> None:
        for key in list(sub.cursors):
            self._forget(sub, key)

    def _forget(self, sub: Subscription, key: str) -> None:
        sub.cursors.pop(key, None)
        subs = self._subs.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[key]

    def empty(self) -> bool:
        return not self._subs

    def streams(self) -> dict[str, str]:
        """The next XREAD's streams: each at the lowest cursor of its subscribers that are
        keeping up."""
        found: dict[str, str] = {}
        for key, subs in self._subs.items():
            if len(subs) == 1:  # the usual case: one wait per stream
                (sub,) = subs
                if not sub.paused:
                    found[key] = sub.cursors[key]
                continue
            cursors = [sub.cursors[key] for sub in subs if not sub.paused]
            if cursors:
                found[key] = min(cursors, key=_position)
        return found

    def dispatch(self, reply: Reply) -> None:
        """Hand each subscriber the entries past its cursor. After an outcome entry a stream
        is not read again for that subscriber: it either ends its wait on it, or refuses a
        forged one (an error that ends the wait)."""
        for key, entries in reply:
            if not entries:
                continue
            for sub in list(self._subs.get(key, ())):
                after = _position(sub.cursors[key])
                if _position(entries[0][0]) > after:  # the usual case: all of them
                    mine = entries
                else:
                    mine = [(i, f) for i, f in entries if _position(i) > after]
                if not mine:
                    continue
                sub.cursors[key] = mine[-1][0]
                if any(stream.entry_kind(fields) == _OUTCOME for _, fields in mine):
                    self._forget(sub, key)
                sub.inbox.put_nowait((key, mine))
                if sub.inbox.qsize() >= _MAX_QUEUED:
                    sub.paused = True

    def resume(self, sub: Subscription) -> bool:
        """After `sub` took a reply: True when it was paused and caught up (its streams
        belong in the reads again)."""
        if not sub.paused or sub.inbox.qsize() > _MAX_QUEUED // 2:
            return False
        sub.paused = False
        return True

    def fail(self, error: BaseException, keys_: Sequence[str] | None = None) -> None:
        """End the wait of every subscriber (of `keys_`, or all) with `error`."""
        subs = {s for k, group in self._subs.items() if keys_ is None or k in keys_ for s in group}
        for sub in subs:
            self.remove(sub)
            sub.inbox.put_nowait(error)


def _first_look(parsed: Any) -> Reply:
    """A waiter's own XREAD (redis-py's parsed reply) in the reader's reply shape."""
    found = parsed.items() if isinstance(parsed, dict) else parsed or []
    return [(_text(key), [(_text(i), dict(f)) for i, f in entries]) for key, entries in found]


def events(
    client: redis.Redis,
    reader: Reader,
    protocol: Protocol,
    run_ids: Sequence[str],
    *,
    timeout: float | None,
) -> Iterator[Event]:
    """Yield verified events of `run_ids` as they arrive, until each has an outcome.

    Raises:
        WaitTimeout: `timeout` seconds passed first (the runs go on).
        BrokerUnavailable: Redis went away while waiting (for longer than `_RECONNECT_FOR`).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    waiting = {keys.events(r) for r in run_ids}
    taken = Taken()
    # A notice that no worker could verify a run shortens the waits until it is settled.
    watch = rejections.Watch(protocol)
    outage = Outage()
    sub = reader.subscribe(list(waiting))
    looked = False
    try:
        while waiting:
            try:
                rejections.check_due(client, watch)
            except REDIS_ERRORS as exc:
                time.sleep(outage.pause(exc))
                continue
            outage.over()
            block = watch.wait_ms(_block_ms(deadline))
            if block < 0 and looked:
                raise _timeout(waiting, timeout)
            if block < 0:
                # Past the deadline before anything was read (`timeout=0`: "is it done?"):
                # one read of the wait's own, without a block, so a run that has ended
                # answers. Nothing came from the inbox yet, so the streams start at 0-0, and
                # the wait ends in this turn (outcome, or timeout): the inbox is never read.
                looked = True
                found = _first_look(client.xread(dict.fromkeys(waiting, "0-0")))
                items: list[Any] = list(found)
            else:
                looked = True
                try:
                    items = [sub.inbox.get(timeout=block / 1000)]
                except queue.Empty:
                    continue
                reader.taken(sub)
            for item in items:
                if isinstance(item, BaseException):
                    raise item
                for event in parse_entries(protocol, [item], {}, taken, watch):
                    if event.outcome is not None:
                        waiting.discard(keys.events(event.run_id))
                        watch.forget(event.run_id)
                    yield event
    except RedisError as exc:  # the rejection checks' and the first look's own commands
        raise lost(exc) from exc
    finally:
        reader.unsubscribe(sub)


async def aevents(
    client: aredis.Redis,
    reader: Reader,
    protocol: Protocol,
    run_ids: Sequence[str],
    *,
    timeout: float | None,
) -> AsyncIterator[Event]:
    """The asyncio twin of `events`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    waiting = {keys.events(r) for r in run_ids}
    taken = Taken()
    watch = rejections.Watch(protocol)
    outage = Outage()
    sub = reader.subscribe(list(waiting))
    inbox: asyncio.Queue[Any] = sub.inbox
    looked = False
    try:
        while waiting:
            try:
                await rejections.acheck_due(client, watch)
            except REDIS_ERRORS as exc:
                await asyncio.sleep(outage.pause(exc))
                continue
            outage.over()
            items: list[Any]
            if inbox.empty():
                block = watch.wait_ms(_block_ms(deadline))
                if block < 0 and looked:
                    raise _timeout(waiting, timeout)
                looked = True
                if block < 0:  # past the deadline before any read: see `events`
                    raw = await client.xread(dict.fromkeys(waiting, "0-0"))
                    items = list(_first_look(raw))
                else:
                    try:
                        async with asyncio.timeout(block / 1000):
                            items = [await inbox.get()]
                    except TimeoutError:
                        continue
                    reader.taken(sub)
            else:
                looked = True
                items = [inbox.get_nowait()]
                reader.taken(sub)
            for item in items:
                if isinstance(item, BaseException):
                    raise item
                for event in parse_entries(protocol, [item], {}, taken, watch):
                    if event.outcome is not None:
                        waiting.discard(keys.events(event.run_id))
                        watch.forget(event.run_id)
                    yield event
    except RedisError as exc:  # the rejection checks' and the first look's own commands
        raise lost(exc) from exc
    finally:
        reader.unsubscribe(sub)


def _timeout(waiting: set[str], timeout: float | None) -> WaitTimeout:
    pending = sorted(k.split("{", 1)[1].split("}", 1)[0] for k in waiting)
    return WaitTimeout(
        f"no result after {timeout} s for run(s) {', '.join(pending[:5])}", run_id=pending[0]
    )
