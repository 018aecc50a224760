"""Cancelling runs that are executing on this worker, on request from any producer.

`cancel()` sets a signed cancellation record and publishes the run id; every worker listens,
and the one running the run cancels its asyncio task (after verifying the record: a bare
publish from anyone who can reach Redis cancels nothing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aredis

from runnable_k8s.store import keys

log = logging.getLogger("runnable_k8s.worker")


class Cancellations:
    def __init__(self) -> None:
        self.running: dict[str, asyncio.Task[object]] = {}
        self._requested: set[str] = set()

    def track(self, run_id: str, task: asyncio.Task[object]) -> None:
        self.running[run_id] = task

    def forget(self, run_id: str) -> None:
        self.running.pop(run_id, None)
        self._requested.discard(run_id)

    def requested(self, run_id: str) -> bool:
        """Whether a cancellation (not a shutdown) stopped this run's task."""
        return run_id in self._requested

    def cancel(self, run_id: str) -> bool:
        task = self.running.get(run_id)
        if task is None:
            return False
        self._requested.add(run_id)
        task.cancel()
        return True

    async def listen(
        self,
        client: aredis.Redis,
        verified: Callable[[str], Awaitable[bool]],
        on_cancel: Callable[[str], None],
    ) -> None:
        """Follow the cancel channel until cancelled; resubscribe when Redis goes away."""
        while True:
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(keys.CANCEL_CHANNEL)
                async for message in pubsub.listen():
                    data = message.get("data", b"")
                    run_id = data.decode() if isinstance(data, bytes) else str(data)
                    if run_id in self.running and await verified(run_id):
                        on_cancel(run_id)
                        self.cancel(run_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cancel listener lost Redis: %s", exc)
                await asyncio.sleep(1.0)
