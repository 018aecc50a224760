"""The producer's check of a rejection notice against where a queued run's message still is
(lua/check.lua); producer/rejections.py decides when to look and what to believe."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aredis

from runnable_k8s.protocol import priority
from runnable_k8s.store import keys, scripts


def reads(run_id: str) -> list[str]:
    """The keys the check's arguments are computed from (one MGET: all of one run's slot):
    status, message copy, body."""
    return [keys.status(run_id), keys.message(run_id), keys.body(run_id)]


def check_keys(run_id: str, queue: str) -> list[str]:
    """The keys of lua/check.lua for `run_id` on `queue`."""
    return [
        keys.status(run_id),
        keys.pending(queue),
        keys.UNACKED,
        queue,
        keys.events(run_id),
        keys.message(run_id),
        keys.body(run_id),
        # The queue's other priority lists: the run may wait on any of them.
        *(name for name in priority.lists(queue).values() if name != queue),
    ]


def check(client: redis.Redis, keys_: list[str], args: list[Any]) -> Any:
    return scripts.load(client, "check")(keys=keys_, args=args)


async def acheck(client: aredis.Redis, keys_: list[str], args: list[Any]) -> Any:
    return await scripts.aload(client, "check")(keys=keys_, args=args)
