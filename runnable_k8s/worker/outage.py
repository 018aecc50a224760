"""Riding out a Redis outage inside a run.

A run's own Redis writes (stream entries, retry progress, the outcome) are the worker's
business, never the runnable's: when Redis goes away for a moment they are retried until it
answers again, for at most the visibility timeout. Past that, kombu delivers the message again
anyway, so the error is let through (and the message handed back) instead of being recorded as
the run's failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from runnable_k8s.connections import REDIS_ERRORS

log = logging.getLogger("runnable_k8s.worker")

T = TypeVar("T")

__all__ = ["REDIS_ERRORS", "ride_out"]


async def ride_out(
    operation: Callable[[], Awaitable[T]], *, within: float, what: str, run_id: str
) -> T:
    """`operation()`, retried with capped exponential backoff while Redis is unreachable, for
    at most `within` seconds. `operation` must be safe to repeat: a command whose reply was
    lost may have been applied."""
    deadline = time.monotonic() + within
    delay = 0.1
    while True:
        try:
            return await operation()
        except REDIS_ERRORS as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("Redis unavailable while %s run=%s, retrying: %s", what, run_id, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
