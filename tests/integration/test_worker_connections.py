"""A worker's Redis clients wait for a free connection when more commands are in flight than
their pool holds, instead of failing the runs that sent them (redis-py's pools raise at once)."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

from runnable_k8s.settings import Settings
from runnable_k8s.worker.execution import Executor

# More commands at once than a default redis-py pool (100) or ours (concurrency + spare) holds.
_AT_ONCE = 180
_CONCURRENCY = 50


def _executor(settings: Settings) -> Executor:
    return Executor(settings.replace(concurrency=_CONCURRENCY))


def test_event_loop_client_waits_for_a_free_connection(settings: Settings) -> None:
    executor = _executor(settings)
    key = f"rk8s-test:empty:{uuid.uuid4().hex}"

    async def main() -> list[object]:
        try:
            # Each BLPOP holds its connection for 0.3 s: all of them cannot hold one at once.
            calls = [executor.redis.blpop([key], timeout=0.3) for _ in range(_AT_ONCE)]
            return await asyncio.gather(*calls)
        finally:
            await executor.redis.aclose()

    replies = asyncio.run(main())
    assert replies == [None] * _AT_ONCE


def test_pool_thread_client_waits_for_a_free_connection(settings: Settings) -> None:
    executor = _executor(settings)
    key = f"rk8s-test:empty:{uuid.uuid4().hex}"
    try:
        with ThreadPoolExecutor(_AT_ONCE) as threads:
            replies = list(
                threads.map(
                    lambda _: executor.clients.sync.blpop([key], timeout=0.3), range(_AT_ONCE)
                )
            )
    finally:
        executor.clients.close_sync()
    assert replies == [None] * _AT_ONCE
