"""kombu's Redis transport, hardened against items on the queue that are not messages, and with
a cheaper record of unacknowledged messages.

Anyone who can write to Redis can LPUSH bytes onto the queue list. Stock kombu parses the item
inside its event loop and an undecodable one kills the whole worker ("Unrecoverable error:
JSONDecodeError"), taking every running run with it. Here such an item is logged and dropped
(BRPOP already removed it). It also keeps one blocking client per connection pool instead of
building one per acknowledgement.

kombu records a delivered message in two keys: the hash `unacked` (tag -> message) and the
sorted set `unacked_index` (tag -> delivery time), each written and removed in MULTI/EXEC, 8
commands per run. The index only serves to find messages older than the visibility timeout. Here
the delivery time travels in the hash entry itself (`[message, exchange, routing key, time]`),
so a delivery is one HSET and an acknowledgement one HDEL, 2 commands per run, and
`restore_visible` finds old entries by scanning the hash (under kombu's restore mutex: at a
worker's start, then once per restore interval for all the workers of one visibility timeout).
Everything else behaves exactly as kombu's transport: the same hash (KEDA's in-flight trigger,
`dev`, the rejection check), the same visibility timeout, the same hand-back on shutdown.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any, Final

from celery.app.amqp import AMQP
from kombu.connection import Connection
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runnable_k8s.store import keys

log = logging.getLogger("runnable_k8s.worker")


# Hash entries read per HSCAN page while looking for messages past the visibility timeout.
_SCAN_PAGE: Final = 500


def _delivered_at(raw: Any) -> float | None:
    """The delivery time in an `unacked` entry; None when it has none (an entry kombu's own
    transport wrote, or anything else: the hash is read from Redis, so it is hostile)."""
    try:
        entry = loads(bytes_to_str(raw))  # type: ignore[no-untyped-call]
        when = entry[3] if isinstance(entry, list) and len(entry) == 4 else None
        # float() of a JSON integer too large for one raises: in the worker's event loop,
        # that stopped every worker ("Unrecoverable error").
        moment = (
            float(when) if isinstance(when, int | float) and not isinstance(when, bool) else None
        )
    except Exception:
        return None
    # NaN and the infinities are never older than any visibility timeout: as times they would
    # keep the entry (counted in flight) for good; untimed, it is restored (or dropped) as old.
    return moment if moment is not None and math.isfinite(moment) else None


_CUT: Final = (RedisConnectionError, RedisTimeoutError, OSError)


class HandBacks:
    """Messages this process handed back while it could not reach Redis, to hand back again
    as soon as it can.

    A worker hands back a run it could not start (Redis went away during its claim). When
    the channel's connection is gone too (a failover, an outage), the hand-back fails, and
    the message stays in the `unacked` hash: before, it came back only after the visibility
    timeout (by default the time limit plus five minutes). Its tag is kept here instead, and
    the next channel of this process hands it back as soon as it reaches Redis (the entry is
    in the shared hash, so any channel can). Handing back twice is harmless: a message whose
    run has started or ended is turned away by its claim. Kept in memory only: if the process
    dies first, the visibility timeout still brings the message back."""

    LIMIT: Final = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tags: set[Any] = set()

    def keep(self, tag: Any) -> None:
        with self._lock:
            if len(self._tags) < self.LIMIT:  # past it, the visibility timeout does the rest
                self._tags.add(tag)

    def take(self) -> list[Any]:
        with self._lock:
            tags = list(self._tags)
            self._tags.clear()
            return tags


handbacks = HandBacks()


class QoS(kombu_redis.QoS):
    # The unacknowledged record is one hash entry carrying its own delivery time (see the
    # module). One command each way needs no transaction: Redis dying between a BRPOP and the
    # HSET leaves a message recorded nowhere, which the rescue sweep pushes back (it is still
    # pending, store/rescue.py), as it did when Redis died between kombu's BRPOP and MULTI.
    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        if pipe:
            yield pipe
            return
        with self.channel.conn_or_acquire(client) as acquired:
            yield acquired.pipeline(transaction=False)

    def append(self, message: Any, delivery_tag: Any) -> None:
        delivery = message.delivery_info
        entry = [message._raw, delivery["exchange"], delivery["routing_key"], time.time()]
        with self.channel.conn_or_acquire() as client:
            client.hset(self.unacked_key, delivery_tag, dumps(entry))  # type: ignore[no-untyped-call]
        # What kombu's append does next: remember the delivery in this process.
        super(kombu_redis.QoS, self).append(message, delivery_tag)  # type: ignore[no-untyped-call]

    def _remove_from_indices(self, delivery_tag: Any, pipe: Any = None) -> Any:
        with self.pipe_or_acquire(pipe) as used:
            # An index entry a worker of kombu's own format left (a rolling upgrade) goes too:
            # only on a restore, which is rare; an acknowledgement is the HDEL alone.
            if pipe is not None:
                used.zrem(self.unacked_index_key, delivery_tag)
            return used.hdel(self.unacked_key, delivery_tag)

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        # kombu's own, for entries of either format (three fields, or four with the time).
        def restore_transaction(pipe: Any) -> None:
            raw = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            if not raw:
                return
            try:
                entry = loads(bytes_to_str(raw))  # type: ignore[no-untyped-call]
                message, exchange, routing_key = entry[0], entry[1], entry[2]
            except Exception as exc:  # hostile: drop the entry, as BRPOP drops a bad item
                log.warning("dropped unacked entry %r: not a kombu record (%s)", tag, exc)
                return
            self.channel._do_restore_message(message, exchange, routing_key, pipe, leftmost)

        with self.channel.conn_or_acquire(client) as acquired:
            acquired.transaction(restore_transaction, self.unacked_key)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        # kombu's own, finding the old entries by their time in the hash instead of the index.
        self._retry_handbacks()
        self._vrestore_count += 1
        if (self._vrestore_count - 1) % (interval or 1):
            return
        with self.channel.conn_or_acquire() as client:
            # One scan per restore interval for the whole cluster, not one per worker: a scan
            # reads every message in flight, where kombu's index query returned only old ones.
            # Workers share the marker only with workers of the same visibility timeout (one
            # with a shorter one must not wait for another's longer interval), and a worker's
            # first restore (at start-up, or on a new channel) scans whatever the marker says.
            every = float(getattr(self.channel, "unacked_restore_interval", 10) or 10)
            marker = keys.unacked_scan(self.unacked_mutex_key, self.visibility_timeout)
            marked = client.set(marker, b"1", nx=True, px=max(100, int(every * 900)))
            if not marked and self._vrestore_count > 1:
                return
            ceil = time.time() - self.visibility_timeout
            try:
                with kombu_redis.Mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire):
                    for tag in self._visible(client, ceil, num):
                        self.restore_by_tag(tag, client)
            except kombu_redis.MutexHeld:
                pass

    def _retry_handbacks(self) -> None:
        # Never raises: it runs first in every restore (at connect, where kombu catches
        # nothing) and at the channel's close; a failure keeps the tags for the next one.
        tags = handbacks.take()
        for index, tag in enumerate(tags):
            try:
                self.restore_by_tag(tag)
            except Exception as exc:
                for left in tags[index:]:
                    handbacks.keep(left)
                log.warning("could not hand back %d message(s) yet: %s", len(tags) - index, exc)
                return
            log.info("handed back message %s, which Redis was away for before", tag)

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        # The channel's close (a stopping worker, a lost connection): kombu hands back the
        # messages it still holds, and this process's hand-backs go with them if Redis is
        # there (else they wait for the visibility timeout, as a dead worker's do).
        self._retry_handbacks()
        return super().restore_unacked_once(stderr)  # type: ignore[no-untyped-call]

    def _visible(self, client: Any, ceil: float, num: int | None) -> list[Any]:
        """Tags of entries delivered before `ceil` (at most `num`; None or 0: all)."""
        found: list[Any] = []
        untimed: list[Any] = []
        for tag, raw in client.hscan_iter(self.unacked_key, count=_SCAN_PAGE):
            when = _delivered_at(raw)
            if when is None:
                untimed.append(tag)
            elif when <= ceil:
                found.append(tag)
        if untimed:
            # An entry without a time: by kombu's index if it has one (a worker of kombu's
            # format wrote it), else restored as old (nothing else ever would).
            scores = client.zmscore(self.unacked_index_key, untimed)
            found += [
                t for t, score in zip(untimed, scores, strict=True) if not score or score <= ceil
            ]
        return found[:num] if num else found

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        # kombu hands a requeued message back with LPUSH, to the end of the line (BRPOP takes
        # from the other end). The worker requeues only runs it could not start, never because
        # of the run: one handed back by a stopping worker, or while Redis was away. Each was
        # the next to run and keeps that place (RPUSH, as kombu's own restore after the
        # visibility timeout does), instead of waiting behind the whole backlog, possibly past
        # its expiry.
        if not requeue:
            super().reject(delivery_tag, requeue=False)  # type: ignore[no-untyped-call]
            return
        try:
            self.restore_by_tag(delivery_tag, leftmost=False)
        except _CUT as exc:
            handbacks.keep(delivery_tag)
            log.warning(
                "handing back message %s once Redis is reachable again: %s", delivery_tag, exc
            )
        # What kombu's own reject does next: forget the delivery (the restore's transaction
        # already took it out of the unacked hash; or `handbacks` holds it).
        super(kombu_redis.QoS, self).ack(delivery_tag)  # type: ignore[no-untyped-call]


class Channel(kombu_redis.Channel):
    QoS = QoS
    _blocking_client: tuple[Any, Any] | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        # kombu builds a new redis-py client around the channel's pool for every message it
        # records as unacknowledged and for every acknowledgement: twice per run, on the
        # consumer's thread, and building one (its table of reply callbacks) cost more than
        # the pipeline it then sent. A client is only a handle on its pool, safe to share
        # between threads, so one is kept per pool (a new pool after a reconnect gets its own).
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        kept = self._blocking_client
        if kept is None or kept[0] is not pool:
            kept = (pool, super()._create_client())  # type: ignore[no-untyped-call]
            self._blocking_client = kept
        return kept[1]

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's own method, with decoding and delivery of the popped item separated from
        # reading it: only a failed read is a connection problem. kombu counts KeyError as a
        # connection error, so a bare `{}` on the queue made the worker reconnect and hand
        # back every run it held.
        try:
            try:
                popped = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not popped:
                raise Empty()
            dest, item = popped
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]  # type: ignore[no-untyped-call]
            self._queue_cycle.rotate(dest)
            try:
                message = loads(bytes_to_str(item))  # type: ignore[no-untyped-call]
                if not isinstance(message, dict) or not isinstance(message.get("properties"), dict):
                    raise ValueError("not a kombu message envelope")
                self.connection._deliver(message, dest)
            except Exception as exc:  # BRPOP removed it: log, count, and drop it
                log.warning(
                    "rejected message claimed_run=? reason=queue item is not a Celery message "
                    "(%s: %s)",
                    type(exc).__name__,
                    str(exc)[:200],
                )
                if _on_malformed is not None:
                    _on_malformed()
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _connparams(self, asynchronous: bool = False) -> Any:
        # After Redis goes away, Celery releases the connection while the old channel is
        # still used: closing it hands back unacknowledged messages, and a run that ends
        # later acks on it. kombu then dereferences the released connection and raises
        # AttributeError ('NoneType' object has no attribute 'hostname', kombu #970, #582),
        # which Celery treats as unrecoverable: the worker exits. A connection error instead
        # is what both paths expect: logged, and the worker reconnects. The message stays in
        # `unacked` and comes back after the visibility timeout; a finished run is not run
        # again.
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("the channel's connection was released")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


_on_malformed: Callable[[], None] | None = None


def on_malformed(hook: Callable[[], None]) -> None:
    """Call `hook` for every dropped queue item (the worker counts them in its metrics)."""
    global _on_malformed  # noqa: PLW0603 (one worker per process; kombu builds the channels)
    _on_malformed = hook


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The same hardened channel, on a pool kombu's Sentinel channel builds: it asks the
    sentinels for the master on every new connection, so a reconnect after a failover
    reaches the new master."""


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


TRANSPORT = f"{__name__}:Transport"
SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"


class BrokerConnection(Connection):
    """kombu's connection, keeping the transport it was built with when it fails over.

    The Sentinel broker URL names every sentinel (`sentinel://a;sentinel://b;...`) and kombu
    treats the others as failover URLs: after a lost connection it switches to the next one,
    and the switch takes the transport from the URL's scheme. Every worker then came back from
    a failover on kombu's stock Sentinel transport, without the hardening above, and never
    handed back the runs the failover cut (their `unacked` entries carry their time, which the
    stock transport does not read: they stayed there until a worker restarted). The switch
    only needs the new address; the sentinels themselves are asked for the master on every
    connection either way (kombu reads them all from the same URL list)."""

    def switch(self, conn_str: str) -> None:
        transport = self.transport_cls
        super().switch(conn_str)  # type: ignore[no-untyped-call]
        self.transport_cls = transport


class BrokerAMQP(AMQP):  # type: ignore[misc]
    """Celery's broker plumbing with `BrokerConnection` (pass as `Celery(amqp=...)`)."""

    Connection = BrokerConnection
