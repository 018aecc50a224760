"""What a run is waiting on, shown beside its status: a signed record written when one of its
model calls starts waiting on a limit and deleted when it is granted (README, "Flow control")."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aredis

from runnable_k8s.protocol import envelope as env
from runnable_k8s.store.limits import wait_record

logger = logging.getLogger("runnable_k8s.worker.flow")


class WaitRecords:
    """Written in line (the call is about to sleep anyway, and in line the write and the
    delete cannot pass each other); a failure is logged, never the call's."""

    def __init__(self, client: Callable[[], aredis.Redis], signer: env.Signer, ttl: float) -> None:
        self._client = client
        self._signer = signer
        self._ttl = max(1, int(ttl))

    async def waiting(self, run_id: str, key: str, reason: str, seconds: float) -> None:
        now = time.time()
        body = json.dumps(
            {"key": key, "reason": reason, "since": now, "until": now + seconds},
            separators=(",", ":"),
        ).encode()
        wire = self._signer.seal(env.Envelope(env.WAITING, run_id, now + self._ttl, body))
        await _quietly(self._client().set(wait_record(run_id), wire, ex=self._ttl))

    async def done(self, run_id: str) -> None:
        await _quietly(self._client().delete(wait_record(run_id)))


async def _quietly(command: Awaitable[Any]) -> None:
    try:
        await command
    except Exception as exc:
        logger.warning("cannot write a run's wait record: %s", exc)
