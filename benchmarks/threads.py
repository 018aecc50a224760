"""Runs on LangGraph threads: what taking turns costs (README, "Threads and multitask strategies").

    python -m benchmarks.threads                 # about a minute on 2 cores
    python -m benchmarks.threads --runs 200 --rounds 3

One worker process (concurrency 16) and an embedded Redis-protocol server; the runnable echoes
its input (`benchmarks.models.EchoRunnable`), so what is measured is the queue, the records and
the thread hand-off, not a model. Per round, interleaved:

- **one busy thread**: `--runs` runs submitted at once on one `thread_id` (enqueue): they run
  one after another, each started by its predecessor's hand-off; runs/s from the first submit
  to the last outcome;
- **100 threads**: `--runs` runs submitted at once, spread over 100 thread ids; runs/s;
- **no thread**: the same runs without a thread id (the baseline the two compare with);
- **sequential invokes**, p50 latency without a thread and on a free thread (the thread
  scripts' own cost), and the per-run cost on the busy thread (its wall time / runs): the wait
  a queued run adds for each run ahead of it.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.models import EchoRunnable
from benchmarks.processes import our_settings, start_ours
from benchmarks.sizes import QUICK


def _config(thread: str | None) -> Any:
    return {"configurable": {"thread_id": thread}} if thread else None


def _burst(remote: Any, runs: int, threads: int) -> float:
    """Runs per second for `runs` submitted at once over `threads` thread ids (0: none)."""
    names = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(threads)]
    start = time.perf_counter()
    handles = [
        remote.submit(i, _config(names[i % threads] if threads else None)) for i in range(runs)
    ]
    for i, handle in enumerate(handles):
        if handle.result(timeout=600) != i:
            raise SystemExit(f"run {i} returned a wrong answer")
    return runs / (time.perf_counter() - start)


def _p50_ms(remote: Any, runs: int, thread: bool) -> float:
    samples = []
    for i in range(runs):
        config = _config(f"bench-{uuid.uuid4().hex[:8]}" if thread else None)
        start = time.perf_counter()
        remote.invoke(i, config)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    from runnable_k8s import RunnableK8s

    with contextlib.ExitStack() as stack:
        settings, _ = our_settings(stack, args.redis_url, "threads")
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rk8s-threads-")))
        worker = start_ours(settings, QUICK, log_dir, "INFO", concurrency=16)
        stack.callback(worker.stop)
        worker.wait_ready(120)
        remote = RunnableK8s(bound=EchoRunnable(), settings=settings)
        for i in range(20):  # warm-up: connections, scripts, the runnable's cache
            remote.invoke(i, _config(f"warm-{i % 2}"))
        figures: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, measure in (
                ("one busy thread (runs/s)", lambda: _burst(remote, args.runs, 1)),
                ("100 threads (runs/s)", lambda: _burst(remote, args.runs, 100)),
                ("no thread (runs/s)", lambda: _burst(remote, args.runs, 0)),
                ("invoke p50, no thread (ms)", lambda: _p50_ms(remote, 50, False)),
                ("invoke p50, free thread (ms)", lambda: _p50_ms(remote, 50, True)),
            ):
                figures.setdefault(name, []).append(measure())
        busy = statistics.median(figures["one busy thread (runs/s)"])
        figures["wait added per run ahead (ms)"] = [1000 / busy]
        print(f"| figure ({args.runs} runs, {args.rounds} rounds, median) | value | rounds |")
        print("|---|---|---|")
        for name, values in figures.items():
            shown = ", ".join(f"{v:.1f}" for v in values)
            print(f"| {name} | {statistics.median(values):.1f} | {shown} |")


if __name__ == "__main__":
    main()
