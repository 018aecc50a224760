"""The order in which a worker fetches from its priority lists (see protocol/priority.py).

kombu's Redis transport asks its "queue cycle" for the list order of every BRPOP and tells
it which list answered. Its own cycles either rotate the answering list to the back (every
list alike: no priority) or keep one fixed order (the top list starves the others). This
cycle leads each BRPOP with a list chosen by smooth weighted round robin (nginx's: every
list gains its weight, the richest leads and pays the total), the rest following highest
first. Deterministic, and no list waits more than `sum(WEIGHTS)` fetches for its turn to
lead. Selected with kombu's `queue_order_strategy` transport option (worker/app.py).
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aredis

from runnable_k8s.protocol import priority
from runnable_k8s.protocol.priority import PRIORITIES, WEIGHTS, of_list
from runnable_k8s.worker.metrics import WorkerMetrics

log = logging.getLogger("runnable_k8s.worker")


class WeightedCycle:
    """kombu's queue-cycle interface (`update`, `consume`, `rotate`), weighted by priority."""

    def __init__(self, it: list[str] | None = None) -> None:
        self.items: list[str] = []
        self._credit: dict[str, int] = {}
        self.update(it or [])

    def update(self, it: list[str]) -> None:
        rank = {p: i for i, p in enumerate(PRIORITIES)}
        # Highest priority first; lists of one priority keep kombu's order.
        self.items[:] = sorted(it, key=lambda name: rank[of_list(name)])
        self._credit = {name: self._credit.get(name, 0) for name in self.items}

    def consume(self, n: int) -> list[str]:
        items = self.items[:n]
        if len(items) < 2:
            return items
        total = 0
        for name in items:
            weight = WEIGHTS[of_list(name)]
            self._credit[name] = self._credit.get(name, 0) + weight
            total += weight
        lead = max(items, key=lambda name: self._credit[name])
        self._credit[lead] -= total
        return [lead, *(name for name in items if name != lead)]

    def rotate(self, last_used: str) -> str:
        # The order depends on the weights alone, not on which list answered.
        return last_used


async def watch_depth(
    client: aredis.Redis, queue: str, interval: float, metrics: WorkerMetrics
) -> None:
    """Export each priority list's length as `runnable_k8s_queue_depth{priority=...}`."""
    lists = priority.lists(queue)
    while True:
        try:
            async with client.pipeline(transaction=False) as pipe:
                for name in lists.values():
                    pipe.llen(name)
                lengths = await pipe.execute()
            for level, length in zip(lists, lengths, strict=True):
                metrics.queue_depth.labels(priority=level).set(int(length))
        except Exception as exc:  # Redis away, or a hostile key of another type: next turn
            log.debug("queue depth not read: %s", exc)
        await asyncio.sleep(interval)
