"""Liveness and readiness as files whose age a probe checks (no Python start, no Redis round
trip in the probe: `celery inspect ping` costs seconds of CPU and fails while Redis is down).

- `<heartbeat_file>` is touched while the event loop turns (a wedged loop stops it: liveness).
- `<heartbeat_file>.ready` is touched only while Redis also answers a PING (readiness).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import redis.asyncio as aredis

log = logging.getLogger("runnable_k8s.worker")


def touch(path: Path) -> None:
    path.touch(exist_ok=True)
    now = time.time()
    os.utime(path, (now, now))


async def heartbeat(client: aredis.Redis, path: str, interval: float) -> None:
    live = Path(path)
    ready = Path(path + ".ready")
    live.parent.mkdir(parents=True, exist_ok=True)
    while True:
        touch(live)
        try:
            async with asyncio.timeout(max(1.0, interval)):
                await client.ping()
            touch(ready)
        except Exception as exc:
            log.warning("readiness: Redis does not answer: %s", exc)
        await asyncio.sleep(interval)


def age(path: str) -> float:
    """Seconds since `path` was last touched (infinite when missing)."""
    try:
        return time.time() - Path(path).stat().st_mtime
    except OSError:
        return float("inf")
