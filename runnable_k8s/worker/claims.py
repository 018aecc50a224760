"""The per-run lease: at most one worker executes a run at a time, and a dead worker's claim
expires quickly so a redelivered message can run.

The lease lasts `LEASE` seconds and its holder renews it while the run goes on, so a SIGKILLed
worker's claim is gone within one lease, long before kombu redelivers its message (after the
visibility timeout). A delivery that finds the lease held does not drop the message: it waits
until the holder records an outcome (then there is nothing to do) or the lease lapses without
one (then it runs the run itself). Either way no accepted run is lost and none runs twice at
the same time. Taking the lease is part of `RunRecords.claim`; releasing it, of `finish`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aredis

from runnable_k8s.protocol import keys

LEASE = 15.0
RENEW_EVERY = 5.0
POLL = 0.5

# Renew or release only a lease we still hold (compare-and-act in one step).
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class RunLease:
    def __init__(self, client: aredis.Redis, run_id: str, owner: str) -> None:
        self._client = client
        self._key = keys.lock(run_id)
        self._owner = owner

    async def release(self) -> None:
        await self._client.eval(_RELEASE, 1, self._key, self._owner)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            with contextlib.suppress(Exception):  # Redis blip: the next renewal retries
                await self._client.eval(_RENEW, 1, self._key, self._owner, int(LEASE * 1000))

    @contextlib.asynccontextmanager
    async def renewing(self) -> AsyncIterator[None]:
        """Renew the (taken) lease for the duration of the block; release it if the block
        fails (a normal end releases it with the outcome)."""
        renewer = asyncio.ensure_future(self._renew_forever())
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                await self.release()
            raise
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
