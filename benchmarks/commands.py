"""Redis commands per invoke and per streamed token, from `INFO commandstats`.

commandstats counts every command the server executes, including the `redis.call`s inside a
Lua script (an EVALSHA that runs five commands counts six), so the figure is what the server
does, not what the client sends. The benchmark's own Redis has only the workers on it; their
idle polling (kombu's BRPOP timeouts, and the like) is measured in a quiet window first and
subtracted in proportion to the time counted. `INFO` itself is left out.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from benchmarks.sides import Side
from benchmarks.workloads import Results


def commandstats(client: Any) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter(
        {
            k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in stats.items()
            if k != "cmdstat_info"
        }
    )


def _delta(before: Counter[str], after: Counter[str]) -> Counter[str]:
    return Counter({k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)})


class Counting:
    """Counts commands on one server, less the idle rate measured over `quiet` seconds."""

    def __init__(self, client: Any, quiet: float, settle: float = 0.3) -> None:
        self.client = client
        self.settle = settle
        before = commandstats(client)
        start = time.perf_counter()
        time.sleep(quiet)
        after = commandstats(client)
        self.quiet_seconds = time.perf_counter() - start
        self.idle = _delta(before, after)

    @property
    def idle_per_s(self) -> float:
        return sum(self.idle.values()) / self.quiet_seconds

    def per_item(self, items: int, job: Callable[[], None]) -> tuple[float, dict[str, float]]:
        """Commands per item of `job`, in all and by command; waits `settle` seconds after it
        for work the workers finish after the caller has its answer."""
        before = commandstats(self.client)
        start = time.perf_counter()
        job()
        time.sleep(self.settle)
        seconds = time.perf_counter() - start
        calls = _delta(before, commandstats(self.client))
        scale = seconds / self.quiet_seconds
        mix = {
            name: (n - self.idle.get(name, 0) * scale) / items
            for name, n in calls.items()
            if n - self.idle.get(name, 0) * scale > 0
        }
        total = (sum(calls.values()) - sum(self.idle.values()) * scale) / items
        return total, dict(sorted(mix.items(), key=lambda kv: -kv[1]))


def count_commands(
    sides: list[Side],
    redis_url: str,
    *,
    items: int,
    tokens: int,
    quiet: float,
    results: dict[str, Results],
) -> float:
    """W1 invokes on each side that uses Redis, and one stream of `tokens` on ours. Returns the
    idle rate subtracted (commands/s)."""
    import redis

    from benchmarks.streaming import s1
    from benchmarks.workloads import w1

    client = redis.Redis.from_url(redis_url)
    try:
        counting = Counting(client, quiet)
        for side in sides:
            if not side.uses_redis:
                continue
            out = results[side.name]
            out.commands_per_invoke, out.invoke_commands = counting.per_item(
                items, lambda side=side: w1(side, items, 70_000, Results())
            )
            if side.streams:
                out.commands_per_token, out.token_commands = counting.per_item(
                    tokens, lambda side=side: s1(side, tokens, Results())
                )
        return counting.idle_per_s
    finally:
        client.close()
