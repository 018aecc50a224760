"""The rescue sweep's Redis side: runs pending too long whose message is in neither the queue
nor kombu's unacknowledged hash are pushed back (worker/rescue.py says why and when)."""

from __future__ import annotations

import time
from typing import Final

import redis.asyncio as aredis

from runnable_k8s.protocol import priority
from runnable_k8s.store import keys, scripts

# Bounds that keep one sweep cheap for Redis: LPOS scans the queue list.
BATCH: Final = 50
MAX_QUEUE_SCAN: Final = 10_000


class Sweeper:
    def __init__(self, client: aredis.Redis, queue: str) -> None:
        self._client = client
        self._queue = queue
        self._sweep = scripts.aload(client, "sweep")

    async def sweep(self, *, after: float, every: float) -> list[str]:
        """One sweep of runs pending for over `after` seconds, unless another worker swept
        within `every` seconds. Returns the rescued run ids."""
        got = await self._client.set(
            keys.rescue_lock(self._queue), b"1", nx=True, px=int(every * 1000)
        )
        if not got:
            return []
        # Normal (the queue's own list) first: the script's default for a foreign copy.
        lists = sorted(priority.lists(self._queue).values(), key=lambda n: n != self._queue)
        for name in lists:
            if await self._client.llen(name) > MAX_QUEUE_SCAN:
                return []  # a deep backlog: sweep once it drains (LPOS would scan it all)
        raw = await self._sweep(
            keys=[keys.pending(self._queue), keys.UNACKED, *lists],
            # The script spells the message key from this prefix (lua/sweep.lua).
            args=[time.time() - after, BATCH, f"{keys.PREFIX}:", MAX_QUEUE_SCAN],
        )
        return [r.decode() if isinstance(r, bytes) else str(r) for r in raw or []]
