"""What a run is waiting on, shown beside its status: a signed record written when one of its
model calls starts waiting on a limit and deleted when it is granted (README, "Flow control")."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import redis.asyncio as aredis

from runnable_k8s.protocol import envelope as env
from runnable_k8s.store.limits import wait_record

logger = logging.getLogger("runnable_k8s.worker.flow")


class WaitRecords:
    """Writes in the background: a status display must never slow or fail a model call."""

    def __init__(self, client: Callable[[], aredis.Redis], signer: env.Signer, ttl: float) -> None:
        self._client = client
        self._signer = signer
        self._ttl = max(1, int(ttl))
        self._tasks: set[asyncio.Task[None]] = set()

    def waiting(self, run_id: str, key: str, reason: str, seconds: float) -> None:
        now = time.time()
        body = json.dumps(
            {"key": key, "reason": reason, "since": now, "until": now + seconds},
            separators=(",", ":"),
        ).encode()
        wire = self._signer.seal(env.Envelope(env.WAITING, run_id, now + self._ttl, body))
        self._spawn(self._client().set(wait_record(run_id), wire, ex=self._ttl))

    def done(self, run_id: str) -> None:
        self._spawn(self._client().delete(wait_record(run_id)))

    def _spawn(self, command: object) -> None:
        async def run() -> None:
            try:
                await command  # type: ignore[misc]
            except Exception as exc:
                logger.warning("cannot write a run's wait record: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
