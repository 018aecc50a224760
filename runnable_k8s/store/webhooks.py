"""The run store's part of completion webhooks: each run's signed delivery record and the
due-time set every worker's delivery loop drains (worker/webhooks.py).

The producer writes the record (URL, "pending") and a first look at `RECHECK` seconds in the
same transaction as the run; the worker that records the outcome moves the look to now. A
look at a run still going only schedules the next one, so a delivery survives the finishing
worker dying before it moved the look: it goes out at most `RECHECK` seconds late.
"""

from __future__ import annotations

import time
from typing import Any, Final

import redis
import redis.asyncio as aredis

from runnable_k8s.protocol.envelope import Signer
from runnable_k8s.protocol.webhook import WebhookDelivery, open_delivery, seal_delivery
from runnable_k8s.store import keys, scripts

RECHECK: Final = 60.0
"""Seconds between looks at a run with a webhook that has not ended."""


def plan(signer: Signer, run_id: str, url: str, now: float) -> tuple[bytes, float]:
    """The producer's part: the sealed "pending" record and the first look's time."""
    return seal_delivery(signer, run_id, WebhookDelivery(url, updated_at=now)), now + RECHECK


def read(client: redis.Redis, signer: Signer, run_id: str) -> WebhookDelivery | None:
    """The run's verified delivery record; None without one (no webhook, or expired).

    Raises:
        SignatureRejected: the record was forged or tampered with.
    """
    raw = client.get(keys.webhook(run_id))
    return None if not isinstance(raw, bytes) else open_delivery(signer, raw, run_id)


class DueSet:
    """The worker's side: claim due deliveries, record progress, schedule the next look."""

    def __init__(self, client: aredis.Redis, signer: Signer, queue: str) -> None:
        self._client = client
        self._signer = signer
        self._key = keys.webhooks(queue)
        self._claim = scripts.aload(client, "webhook_claim")

    async def due_now(self, run_id: str) -> None:
        """The run ended: look at it now (only if it has a webhook: XX; never later: LT)."""
        await self._client.zadd(self._key, {run_id: time.time()}, xx=True, lt=True)

    async def claim(self, lease: float, most: int) -> list[str]:
        now = time.time()
        raw: Any = await self._claim(keys=[self._key], args=[now, now + lease, most])
        return [r.decode() if isinstance(r, bytes) else str(r) for r in raw or []]

    async def record(self, run_id: str) -> WebhookDelivery | None:
        """Raises: SignatureRejected (forged or tampered record)."""
        raw = await self._client.get(keys.webhook(run_id))
        return None if not isinstance(raw, bytes) else open_delivery(self._signer, raw, run_id)

    async def update(self, run_id: str, delivery: WebhookDelivery, next_look: float | None) -> None:
        """Store `delivery` (keeping the record's TTL) and schedule the next look, or drop the
        run from the set when `next_look` is None (delivered, failed or refused)."""
        sealed = seal_delivery(self._signer, run_id, delivery)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(keys.webhook(run_id), sealed, keepttl=True, xx=True)
            if next_look is None:
                pipe.zrem(self._key, run_id)
            else:
                pipe.zadd(self._key, {run_id: next_look})
            await pipe.execute()

    async def later(self, run_id: str, when: float) -> None:
        await self._client.zadd(self._key, {run_id: when})

    async def forget(self, run_id: str) -> None:
        await self._client.zrem(self._key, run_id)
