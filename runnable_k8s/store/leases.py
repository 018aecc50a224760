"""Per-run leases: renewed and released only by the delivery that holds them.

Taking a lease is part of `RunRecords.claim` and releasing it at the end, of `finish`; this
is the rest (worker/claims.py decides when). One round trip renews every lease a worker holds
and reads their cancellation records: a cancellation published while a run was being claimed,
or while the listener reconnected, is caught within a round.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aredis

from runnable_k8s.store import keys, scripts


class Leases:
    def __init__(self, client: aredis.Redis) -> None:
        self._client = client
        self._renew = scripts.source("renew")
        self._release = scripts.aload(client, "release")

    async def renew(self, held: Sequence[tuple[str, str]], lease: float) -> list[bytes | None]:
        """Renew each (run id, owner) lease still held by that owner for `lease` seconds.
        Returns each run's cancellation record (unverified bytes, None if none)."""
        async with self._client.pipeline(transaction=False) as pipe:
            for run_id, owner in held:
                # EVAL, not EVALSHA: redis-py asks SCRIPT EXISTS before a pipeline with
                # registered scripts, one more command per round for a few bytes saved.
                pipe.eval(self._renew, 1, keys.lock(run_id), owner, int(lease * 1000))
                pipe.get(keys.cancel(run_id))
            replies = await pipe.execute()
        return [r if isinstance(r, bytes) else None for r in replies[1::2]]

    async def release(self, run_id: str, owner: str) -> None:
        """Release the lease on `run_id` if `owner` still holds it."""
        await self._release(keys=[keys.lock(run_id)], args=[owner])
