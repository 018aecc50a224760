"""What Celery task events cost a run: Redis commands, bytes sent to Redis and W1 latency, with
a worker's task events on (`RUNNABLE_K8S_TASK_EVENTS=true`) and off.

    python -m benchmarks.events [--runs 300] [--rounds 3]

Two workers on a private embedded server (so `INFO commandstats` counts nothing else), one
with events on, one off, each on its own queue; W1's sequential invokes of `prompt | model |
parser`, interleaved in rounds between the two. Counts include the producer's commands and
the workers' idle polling during the block; no monitor is subscribed (each one subscribed
receives every event as well).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.commands import commandstats
from benchmarks.processes import our_settings, start_ours
from benchmarks.sizes import Sizes
from benchmarks.workloads import check, question


def _counters(client: redis.Redis) -> dict[str, int]:
    counts = commandstats(client)
    stats: dict[str, Any] = client.info("stats")
    counts["bytes in"] = int(stats["total_net_input_bytes"])
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.events", description=__doc__)
    parser.add_argument("--runs", type=int, default=300, help="invokes per side (all rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args(argv)

    from benchmarks.models import expected, small_chain
    from runnable_k8s import RunnableK8s

    sizes = Sizes(args.runs, 0, 0, 0.0, 0, 0, rounds=args.rounds, concurrency=100)
    per_round = max(1, args.runs // args.rounds)
    with contextlib.ExitStack() as stack:
        base, _ = our_settings(stack, None, "events")
        client = redis.Redis.from_url(base.require_redis_url())
        root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        chains: dict[str, Any] = {}
        for mode in ("off", "on"):
            settings = base.replace(queue=f"{base.queue}-{mode}")
            (root / mode).mkdir()
            env = {"RUNNABLE_K8S_TASK_EVENTS": "true" if mode == "on" else "false"}
            worker = start_ours(settings, sizes, root / mode, "INFO", extra_env=env)
            stack.callback(worker.stop)
            worker.wait_ready()
            chains[mode] = RunnableK8s(bound=small_chain(), settings=settings)
            for i in range(20):  # warm up: runnable cache, connections
                chains[mode].invoke(question(i))
        totals: dict[str, dict[str, int]] = {"off": {}, "on": {}}
        latencies: dict[str, list[float]] = {"off": [], "on": []}
        for number in range(args.rounds):
            for mode in ("off", "on") if number % 2 == 0 else ("on", "off"):
                before = _counters(client)
                for i in range(per_round):
                    asked = question(i)
                    started = time.perf_counter()
                    answer = chains[mode].invoke(asked)
                    latencies[mode].append(time.perf_counter() - started)
                    check(mode, "W1", answer, expected(asked["input"]))
                after = _counters(client)
                for name, count in after.items():
                    totals[mode][name] = totals[mode].get(name, 0) + count - before.get(name, 0)

    runs = per_round * args.rounds
    print(f"\ntask events, {runs} sequential invokes per side in {args.rounds} rounds\n")
    print("| per run | events off | events on | difference |")
    print("|---|---:|---:|---:|")
    commands = {m: sum(v for k, v in totals[m].items() if k != "bytes in") / runs for m in totals}
    rows = [
        ("Redis commands", commands["off"], commands["on"]),
        ("of which PUBLISH", *(totals[m].get("publish", 0) / runs for m in ("off", "on"))),
        ("bytes sent to Redis", *(totals[m]["bytes in"] / runs for m in ("off", "on"))),
        ("W1 latency p50, ms", *(statistics.median(latencies[m]) * 1000 for m in ("off", "on"))),
    ]
    for name, off, on in rows:
        print(f"| {name} | {off:,.2f} | {on:,.2f} | {on - off:+,.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
