"""An enqueue that survives a Sentinel failover (`RUNNABLE_K8S_REPLICA_ACKS` above 0).

The producer reports a run as accepted only once `replica_acks` replicas acknowledged its
transaction (replication.fence). When the master dies mid-way, the transaction's fate is
unknown: its reply may be lost although it was applied (and replicated), or it was applied and
died with the master. So after any failure the producer waits for Redis (a new master, found
through the sentinels), looks for the run's status record (written by the same script as its
message: both or neither survived) and writes the transaction again only if it is absent.
A run is therefore enqueued once, and `BrokerUnavailable` after `failover_wait` means Redis
stayed away: nothing this call wrote survived on any master it could reach.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis

from runnable_k8s import replication
from runnable_k8s.connections import REDIS_ERRORS
from runnable_k8s.errors import NotReplicated
from runnable_k8s.producer.redis_errors import unavailable
from runnable_k8s.settings import Settings

_FIRST_PAUSE = 0.05
_LONGEST_PAUSE = 1.0
T = TypeVar("T")


class _Pauses:
    """Capped exponential pauses within `failover_wait`: the one pace of every retry here."""

    def __init__(self, settings: Settings) -> None:
        self.deadline = time.monotonic() + settings.failover_wait
        self.pause = _FIRST_PAUSE

    def next(self) -> float | None:
        """Seconds to pause before the next attempt; None once `failover_wait` is spent."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return None
        pause = min(self.pause, remaining)
        self.pause = min(self.pause * 2, _LONGEST_PAUSE)
        return pause


class _Attempts:
    """The enqueue's attempts, and the error to raise once `failover_wait` is over."""

    def __init__(self, settings: Settings, run_id: str) -> None:
        self.settings = settings
        self.run_id = run_id
        self.pauses = _Pauses(settings)
        self.uncertain = False
        self.last: BaseException | None = None
        self.short = False

    def failed(self, exc: BaseException | None) -> float:
        """Record a failed attempt; the seconds to pause before the next, or raise."""
        self.uncertain = True
        self.last, self.short = exc, exc is None
        pause = self.pauses.next()
        if pause is None:
            raise self.error()
        return pause

    def error(self) -> Exception:
        wait = self.settings.failover_wait
        if self.short or self.last is None:
            return NotReplicated(
                f"run {self.run_id} is on the Redis master, but its replicas did not all "
                f"acknowledge it within {wait} s"
            )
        return unavailable(f"cannot enqueue on Redis within {wait} s", self.last)


# One fence per client, so its replica count is read once a second, not per enqueue.
_fences: weakref.WeakKeyDictionary[Any, replication.Fence] = weakref.WeakKeyDictionary()


def fence_for(client: Any, settings: Settings) -> replication.Fence:
    fence = _fences.get(client)
    if fence is None:
        fence = replication.Fence(settings.replica_acks, settings.replica_ack_timeout)
        _fences[client] = fence
    return fence


def enqueue(
    client: redis.Redis, settings: Settings, write: Callable[[], None], probe: str, run_id: str
) -> None:
    """Run `write` (the enqueue transaction of `run_id`, which sets `probe`) until replicas
    acknowledged it.

    Raises:
        BrokerUnavailable / SentinelUnavailable: Redis stayed away for `failover_wait`.
        NotReplicated: the master has it, too few replicas acknowledged it.
    """
    attempts = _Attempts(settings, run_id)
    fence = fence_for(client, settings)
    while True:
        try:
            if not (attempts.uncertain and client.exists(probe)):
                write()
            acked, wanted = fence.wait(client)
            if acked >= wanted:
                return
            fence.forget()
            time.sleep(attempts.failed(None))
        except REDIS_ERRORS as exc:
            fence.forget()
            time.sleep(attempts.failed(exc))


async def aenqueue(
    client: aredis.Redis,
    settings: Settings,
    write: Callable[[], Awaitable[None]],
    probe: str,
    run_id: str,
) -> None:
    """The asyncio twin of `enqueue`."""
    attempts = _Attempts(settings, run_id)
    fence = fence_for(client, settings)
    while True:
        try:
            if not (attempts.uncertain and await client.exists(probe)):
                await write()
            acked, wanted = await fence.await_(client)
            if acked >= wanted:
                return
            fence.forget()
            await asyncio.sleep(attempts.failed(None))
        except REDIS_ERRORS as exc:
            fence.forget()
            await asyncio.sleep(attempts.failed(exc))


def read(settings: Settings, call: Callable[[], T]) -> T:
    """`call()` (a read), retried through a failover for `failover_wait` seconds when
    `replica_acks` is set (a high-availability deployment); once otherwise."""
    if not settings.replica_acks:
        return call()
    pauses = _Pauses(settings)
    while True:
        try:
            return call()
        except REDIS_ERRORS:
            pause = pauses.next()
            if pause is None:
                raise
            time.sleep(pause)


async def aread(settings: Settings, call: Callable[[], Awaitable[T]]) -> T:
    """The asyncio twin of `read`."""
    if not settings.replica_acks:
        return await call()
    pauses = _Pauses(settings)
    while True:
        try:
            return await call()
        except REDIS_ERRORS:
            pause = pauses.next()
            if pause is None:
                raise
            await asyncio.sleep(pause)
