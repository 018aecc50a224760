"""kombu's Redis transport, hardened against items on the queue that are not messages.

Anyone who can write to Redis can LPUSH bytes onto the queue list. Stock kombu parses the item
inside its event loop and an undecodable one kills the whole worker ("Unrecoverable error:
JSONDecodeError"), taking every running run with it. Here such an item is logged and dropped
(BRPOP already removed it). It also keeps one blocking client per connection pool instead of
building one per acknowledgement, and records and forgets an unacknowledged message with two
commands instead of a four-command transaction. Everything else behaves exactly as kombu's
transport.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger("runnable_k8s.worker")


class QoS(kombu_redis.QoS):
    # kombu writes the unacknowledged record (ZADD index, HSET hash) and removes it (ZREM, HDEL)
    # each in MULTI/EXEC: 8 commands per run, where 4 do the work. Without the transaction,
    # Redis dying between the two commands of a pair leaves one of two states, both harmless
    # in the order used here: an index entry without its hash entry (kombu's restore drops it;
    # a message never recorded is what the rescue sweep pushes back, store/rescue.py), never a
    # hash entry without an index entry (a message nothing would restore, counted in flight
    # forever). So the record is written index first, and removed hash first.
    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        if pipe:
            yield pipe
            return
        with self.channel.conn_or_acquire(client) as acquired:
            yield acquired.pipeline(transaction=False)

    def _remove_from_indices(self, delivery_tag: Any, pipe: Any = None) -> Any:
        with self.pipe_or_acquire(pipe) as used:
            return used.hdel(self.unacked_key, delivery_tag).zrem(
                self.unacked_index_key, delivery_tag
            )

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
        self.restore_by_tag(delivery_tag, leftmost=False)  # type: ignore[no-untyped-call]
        # What kombu's own reject does next: forget the delivery (the restore's transaction
        # already took it out of the unacked hash and index).
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
