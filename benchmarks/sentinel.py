"""What high availability costs: W1 and W2 on plain Redis, on Sentinel without waiting for a
replica, and on Sentinel with `RUNNABLE_K8S_REPLICA_ACKS=1` (every enqueue and every recorded
outcome waits for the replica: README, "High availability").

    python -m benchmarks.sentinel [--w1 150] [--w2 1000] [--rounds 3]

Each side has its own worker (one process, threads pool) and its own servers: an embedded
Valkey; a master, a replica and three sentinels on loopback (tests/support/sentinel.py). The
sides run interleaved, round by round, in an order that reverses every round.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.processes import our_settings, start_ours
from benchmarks.sides import Ours
from benchmarks.sizes import FULL
from benchmarks.workloads import Results, w1, w2
from tests.support.sentinel import SentinelGroup

SIDES = {
    "plain Redis": ("plain", 0),
    "Sentinel, no WAIT": ("sentinel", 0),
    "Sentinel, REPLICA_ACKS=1": ("sentinel", 1),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--w1", type=int, default=150, help="W1 invokes per side, in total")
    parser.add_argument("--w2", type=int, default=1000, help="W2 batch size (every round)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = FULL
    with contextlib.ExitStack() as stack:
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rk8s-ha-")))
        group = SentinelGroup()
        stack.callback(group.close)
        sentinel_url = group.start()
        sides: dict[str, Ours] = {}
        for label, (kind, acks) in SIDES.items():
            url = sentinel_url if kind == "sentinel" else None
            settings, _ = our_settings(stack, url, "ha")
            settings = settings.replace(replica_acks=acks)
            name = f"ha-{len(sides)}"
            worker = start_ours(
                settings,
                sizes,
                log_dir,
                "INFO",
                extra_env={"RUNNABLE_K8S_REPLICA_ACKS": str(acks)},
                name=name,
                concurrency=sizes.concurrency,
            )
            stack.callback(worker.stop)
            worker.wait_ready()
            side = Ours(settings, sizes, worker)
            stack.callback(side.close)
            sides[label] = side
        for side in sides.values():
            warm_up_w(side)
        results = {label: Results() for label in sides}
        order = list(sides)
        per_round = max(1, args.w1 // args.rounds)
        for round_ in range(args.rounds):
            for label in order if round_ % 2 == 0 else reversed(order):
                w1(sides[label], per_round, round_ * per_round, results[label])
                w2(sides[label], args.w2, results[label])
        report(results, args)


def warm_up_w(side: Ours) -> None:
    scratch = Results()
    w1(side, 5, 10_000, scratch)
    w2(side, 50, scratch)


def report(results: dict[str, Results], args: argparse.Namespace) -> None:
    base = results["plain Redis"]
    base_w1 = statistics.median(base.w1_latencies_ms)
    base_w2 = statistics.median(base.w2_items_per_s)
    print(f"| side | W1 p50 ({args.w1} invokes) | W1 p99 | W2 batch of {args.w2} |")
    print("|---|---:|---:|---:|")
    for label, out in results.items():
        p50 = statistics.median(out.w1_latencies_ms)
        p99 = statistics.quantiles(out.w1_latencies_ms, n=100)[98]
        items = statistics.median(out.w2_items_per_s)
        print(
            f"| {label} | {p50:.2f} ms ({p50 / base_w1:.2f}x) | {p99:.2f} ms | "
            f"{items:,.0f} items/s ({items / base_w2:.2f}x) |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
