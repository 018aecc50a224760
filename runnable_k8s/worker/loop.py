"""One asyncio event loop per worker process, in a daemon thread.

Celery 5 has no async tasks. Its threads pool calls our task in a pool thread, which hands the
coroutine to this loop and waits; the loop holds every run's awaits (model calls) at once, so
one process serves as many slow LLM calls as it has pool threads, with one Redis connection
pool and one runnable cache.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("runnable_k8s.worker")


class LoopThread:
    def __init__(self, name: str = "runnable-k8s-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        while True:
            try:
                self.loop.run_forever()
                return  # stopped by `stop`
            except (SystemExit, KeyboardInterrupt) as exc:
                # asyncio re-raises these out of `run_forever` when a task raises them (after
                # setting them as the task's exception). In this thread they can only come
                # from application code in a run (signals reach the main thread): the awaiting
                # run records them as its failure, and the loop must go on serving the others.
                log.error(
                    "%s escaped a task on the event loop; the loop goes on", type(exc).__name__
                )

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and block the calling (pool) thread until it is done."""
        return self.submit(coro).result()

    def stop(self, timeout: float = 5.0) -> None:
        if self._started and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
