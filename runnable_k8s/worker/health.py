"""Liveness and readiness as files whose age a probe checks (no Python start, no Redis round
trip in the probe: `celery inspect ping` costs seconds of CPU and fails while Redis is down).

- `<heartbeat_file>` is touched by a task on the event loop, so it stops aging only while the
  loop turns: a run that blocks the loop (`time.sleep`, CPU-bound code) wedges every run of
  the process, and the file's growing age turns liveness red.
- `<heartbeat_file>.ready` is touched only after Redis answers a PING (readiness). Liveness
  stays green while Redis is away: restarting the pod would not bring Redis back.

The same two instants are exported as metrics when a `WorkerMetrics` is given. `check` and
`python -m runnable_k8s.worker.health FILE MAX_AGE` answer a probe without the worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio as aredis

    from runnable_k8s.worker.metrics import WorkerMetrics

log = logging.getLogger("runnable_k8s.worker")


def touch(path: Path) -> None:
    path.touch(exist_ok=True)
    now = time.time()
    os.utime(path, (now, now))


def ready_file(path: str) -> str:
    """The readiness file beside the liveness file `path`."""
    return path + ".ready"


async def heartbeat(
    client: aredis.Redis, path: str, interval: float, metrics: WorkerMetrics | None = None
) -> None:
    """Touch the liveness file every `interval` seconds, and the readiness file when Redis
    answers a PING within that time too. Runs until cancelled."""
    live = Path(path)
    ready = Path(ready_file(path))
    live.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            touch(live)
        except OSError as exc:  # e.g. a full /tmp: the probe will notice, keep trying
            log.warning("liveness: cannot touch %s: %s", live, exc)
        if metrics is not None:
            metrics.heartbeat.set_to_current_time()
        try:
            async with asyncio.timeout(max(1.0, interval)):
                await client.ping()
            touch(ready)
            if metrics is not None:
                metrics.ready.set_to_current_time()
                metrics.redis_up.set(1)
        except Exception as exc:
            if metrics is not None:
                metrics.redis_up.set(0)
            log.warning("readiness: Redis does not answer: %s", exc)
        await asyncio.sleep(interval)


def age(path: str) -> float:
    """Seconds since `path` was last touched (infinite when missing)."""
    try:
        return time.time() - Path(path).stat().st_mtime
    except OSError:
        return float("inf")


def check(path: str, max_age: float, *, ready: bool = False) -> bool:
    """Whether the worker writing heartbeat file `path` is live (its loop turned within
    `max_age` seconds) or, with `ready=True`, ready (Redis answered within `max_age`)."""
    return age(ready_file(path) if ready else path) < max_age


def main(argv: list[str] | None = None) -> int:
    """`python -m runnable_k8s.worker.health FILE MAX_AGE [--ready]`: exit 0 when healthy."""
    args = list(sys.argv[1:] if argv is None else argv)
    want_ready = "--ready" in args
    args = [a for a in args if a != "--ready"]
    if len(args) != 2:
        print("usage: python -m runnable_k8s.worker.health FILE MAX_AGE [--ready]", file=sys.stderr)
        return 2
    path, max_age = args[0], float(args[1])
    healthy = check(path, max_age, ready=want_ready)
    what, target = ("ready", ready_file(path)) if want_ready else ("live", path)
    print(f"{what}: {'ok' if healthy else 'stale'} (age {age(target):.1f} s)")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
