"""Cancelling runs that are executing on this worker, on request from any producer.

`cancel()` sets a signed cancellation record and publishes the run id; every worker listens,
and the one running the run cancels its asyncio task (after verifying the record: a bare
publish from anyone who can reach Redis cancels nothing). A publish can be missed (the run's
task not tracked yet, the listener reconnecting): the record is also looked at once shortly
after a run starts, and on every lease renewal round (worker/claims.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

import redis.asyncio as aredis

from runnable_k8s.errors import MessageRejected
from runnable_k8s.protocol.messages import Protocol
from runnable_k8s.store import keys
from runnable_k8s.store.records import RunRecords
from runnable_k8s.worker.logs import RunEvent, forged, run_event

log = logging.getLogger("runnable_k8s.worker")

# After a run starts, when its cancellation record is looked at once (see `track`).
_LATE_CHECK: Final = 0.5


class Cancellations:
    """The runs this worker executes, by id, and the cancellations requested for them."""

    def __init__(
        self,
        client: Callable[[], aredis.Redis],
        protocol: Protocol,
        records: Callable[[], RunRecords],
    ) -> None:
        self._client = client
        self._protocol = protocol
        self._records = records
        self.running: dict[str, asyncio.Task[object]] = {}
        self._requested: set[str] = set()
        self._background: set[asyncio.Future[None]] = set()

    def track(self, run_id: str, task: asyncio.Task[object]) -> None:
        self.running[run_id] = task
        # A cancel published between the claim and now found no task to cancel; one look at
        # the record shortly after covers that (and a publish missed while reconnecting).
        asyncio.get_running_loop().call_later(_LATE_CHECK, self._look_soon, run_id)

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

    def found_record(self, run_id: str, record: bytes) -> None:
        """A cancellation record found for a run this worker holds (the late look, or a lease
        renewal round): cancel the run if the record verifies."""
        if self.requested(run_id):
            return
        try:
            self._protocol.open_cancel(record, run_id)
        except MessageRejected as exc:
            forged("cancellation", run_id, exc)
            return
        if self.cancel(run_id):
            _cancelling(run_id)

    def _look_soon(self, run_id: str) -> None:
        if run_id in self.running:
            # Keep a reference: the loop holds tasks only weakly.
            task = asyncio.ensure_future(self._look(run_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _look(self, run_id: str) -> None:
        if run_id not in self.running:
            return  # already over: nothing to cancel
        with contextlib.suppress(Exception):
            record = await self._client().get(keys.cancel(run_id))
            if isinstance(record, bytes):
                self.found_record(run_id, record)

    async def listen(self) -> None:
        """Follow the cancel channel until cancelled (resubscribing when Redis goes away), and
        cancel local runs named there once their signed request checks out."""
        while True:
            try:
                pubsub = self._client().pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(keys.CANCEL_CHANNEL)
                async for message in pubsub.listen():
                    data = message.get("data", b"")
                    run_id = data.decode() if isinstance(data, bytes) else str(data)
                    if run_id in self.running and await self._verified(run_id):
                        _cancelling(run_id)
                        self.cancel(run_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cancel listener lost Redis: %s", exc)
                await asyncio.sleep(1.0)

    async def _verified(self, run_id: str) -> bool:
        return (await self._records().read(run_id)).cancel_requested


def _cancelling(run_id: str) -> None:
    run_event(log, logging.INFO, RunEvent("cancelling", run_id), "cancelling run=%s", run_id)
