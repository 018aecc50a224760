"""Liveness and readiness as files whose age a probe checks (no Python start, no Redis round
trip in the probe: `celery inspect ping` costs seconds of CPU and fails while Redis is down).

- `<heartbeat_file>` is touched by a task on the event loop, so it stops aging only while the
  loop turns: a run that blocks the loop (`time.sleep`, CPU-bound code) wedges every run of
  the process, and the file's growing age turns liveness red.
- `<heartbeat_file>.ready` (readiness) exists only while Celery's consumer takes messages: it
  is written when the consumer has subscribed to the queue (at start and after every
  reconnection, `Readiness.consuming`) and removed the moment it stops (connection lost, warm
  shutdown, exit: `Readiness.stopped`). While it exists, the heartbeat touches it again after
  each PING Redis answers, so it also goes stale while Redis is unreachable or frozen. A worker
  still connecting, or finishing its runs after SIGTERM, is not ready. Liveness stays green
  while Redis is away: restarting the pod would not bring Redis back.

The same two instants are exported as metrics when a `WorkerMetrics` is given. `check` and
`python -m runnable_k8s.worker.health FILE MAX_AGE` answer a probe without the worker; a
process that starts a worker waits for the ready file (`runnable_k8s.spawn`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
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


class Readiness:
    """The ready file `<heartbeat_file>.ready`: present while the consumer takes messages.

    Called from Celery's consumer thread (`consuming`, `stopped`) and from the heartbeat on
    the event loop (`refresh`); one lock orders them, so a refresh that read "consuming" just
    before the consumer stopped cannot write the file back after `stopped` removed it.
    """

    def __init__(self, path: str, metrics: WorkerMetrics | None = None) -> None:
        self.path = Path(ready_file(path))
        self._metrics = metrics
        self._lock = threading.Lock()
        self._consuming = False
        # A file left by this container's previous run (the emptyDir on /tmp outlives it), or
        # a previous process, would show this one ready before it consumes.
        self._remove()
        # Once, at start, as for the liveness file: a folder removed later stays removed (the
        # probe then fails, which is the truth).
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("readiness: cannot create %s: %s", self.path.parent, exc)

    def consuming(self) -> None:
        """The consumer subscribed to the queue: the worker takes messages from now on."""
        with self._lock:
            self._consuming = True
            self._touch()

    def stopped(self) -> None:
        """The consumer stopped taking messages (connection lost, shutting down)."""
        with self._lock:
            self._consuming = False
            self._remove()

    def refresh(self) -> bool:
        """Touch the file again if the consumer still takes messages (after a PING Redis
        answered). Returns whether the worker is ready."""
        with self._lock:
            if self._consuming:
                self._touch()
            return self._consuming

    def _touch(self) -> None:
        try:
            touch(self.path)
        except OSError as exc:  # the probe will notice; keep serving
            log.warning("readiness: cannot touch %s: %s", self.path, exc)
            return
        if self._metrics is not None:
            self._metrics.ready.set_to_current_time()

    def _remove(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("readiness: cannot remove %s: %s", self.path, exc)


async def heartbeat(
    client: aredis.Redis,
    path: str,
    interval: float,
    readiness: Readiness,
    metrics: WorkerMetrics | None = None,
) -> None:
    """Touch the liveness file every `interval` seconds, and the readiness file while the
    consumer takes messages and Redis answers a PING within that time too. Runs until
    cancelled."""
    live = Path(path)
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
            readiness.refresh()
            if metrics is not None:
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
    `max_age` seconds) or, with `ready=True`, ready (its consumer takes messages, and Redis
    answered within `max_age`)."""
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
