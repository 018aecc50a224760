"""The per-run lease: at most one worker executes a run at a time, and a dead worker's claim
expires quickly so a redelivered message can run.

The lease lasts `RUNNABLE_K8S_LEASE` seconds and its holder renews it while the run goes on,
so a SIGKILLed worker's claim is gone within one lease, long before kombu redelivers its
message (after the visibility timeout). A delivery that finds the lease held does not drop
the message: it waits until the holder records an outcome (then there is nothing to do) or
the lease lapses without one (then it runs the run itself). Either way no accepted run is lost
and none runs twice at the same time. Taking the lease is part of `RunRecords.claim`,
releasing it part of `finish`; renewing it is `store.leases`. Each delivery has its own owner
token, so a message delivered twice to the same process cannot pass its own lease.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aredis

from runnable_k8s.store.leases import Leases

LEASE = 15.0
"""Default lease (RUNNABLE_K8S_LEASE); renewed every third of it."""
POLL = 0.5


class LeaseKeeper:
    """Renews the leases of every run this worker holds, in one pipeline per interval (one
    timer for the process, not one task per run)."""

    def __init__(
        self,
        client: aredis.Redis,
        *,
        lease: float = LEASE,
        on_cancel_record: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self._leases = Leases(client)
        self.lease = lease
        self._held: dict[str, str] = {}
        self._task: asyncio.Future[None] | None = None
        self._on_cancel_record = on_cancel_record

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            if not self._held:
                continue
            with contextlib.suppress(Exception):  # Redis blip: the next round retries
                await self._renew_all()

    async def _renew_all(self) -> None:
        held = list(self._held.items())
        records = await self._leases.renew(held, self.lease)
        if self._on_cancel_record is None:
            return
        for (run_id, _), record in zip(held, records, strict=True):
            if record is not None:
                self._on_cancel_record(run_id, record)

    @contextlib.asynccontextmanager
    async def holding(self, run_id: str, owner: str) -> AsyncIterator[None]:
        """Keep the lease `owner` took on `run_id` for the block; release it if the block
        fails (a normal end releases it with the outcome)."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._renew_forever())
        self._held[run_id] = owner
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                await self._leases.release(run_id, owner)
            raise
        finally:
            self._held.pop(run_id, None)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
