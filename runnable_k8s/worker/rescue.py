"""Re-enqueue runs whose Celery message the broker lost.

kombu's Redis transport takes a message off the queue with BRPOP and records it as
unacknowledged with a second command. If Redis dies between the two (or the BRPOP reply is
lost with the connection), the message is gone: it is neither queued nor unacknowledged, and
no visibility timeout brings it back. The producer keeps a copy of every message and a
"pending" entry until a worker claims the run; one worker at a time sweeps runs pending for
longer than `RUNNABLE_K8S_RESCUE_AFTER` and pushes back any whose message is in neither place.
A run rescued twice, or rescued while a slow worker is still claiming it, is harmless: claims
are compare-and-set, and a delivery of a started or finished run does not run it again.
A worker that rejects the exact bytes of a run's stored message takes the run off the pending
set (protocol/rejection.py): pushing them again would only meet the same rejection.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aredis

from runnable_k8s.store.rescue import Sweeper

log = logging.getLogger("runnable_k8s.worker")


class Rescuer:
    def __init__(self, client: aredis.Redis, queue: str, *, after: float, every: float) -> None:
        self._after = after
        self._every = every
        self._sweeper = Sweeper(client, queue)

    async def sweep(self) -> list[str]:
        """One sweep (if no other worker holds the sweep lock). Returns rescued run ids."""
        rescued = await self._sweeper.sweep(after=self._after, every=self._every)
        for run_id in rescued:
            # All a sweep knows is where the message is not. A worker that could not verify a
            # run's stored message took it off the pending set, so it is never pushed again.
            log.warning(
                "rescued run=%s: pending for over %gs, its message neither queued nor held by "
                "a worker; enqueued again",
                run_id,
                self._after,
            )
        return rescued

    async def forever(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                await self.sweep()
            except Exception as exc:  # Redis away, or a hostile key: the next sweep tries again
                log.warning("rescue sweep failed: %s", exc)
