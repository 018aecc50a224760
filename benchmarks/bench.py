"""RunnableK8s against plain Celery, LangServe and the chain in-process: interleaved, on one
Redis and one machine.

    python -m benchmarks.bench                 # full sizes from the issues (a few minutes)
    python -m benchmarks.bench --quick         # smallest configuration (the CI smoke test)
    python -m benchmarks.bench --memory        # also 1,000 slow streams in one worker (S3)
    python -m benchmarks.bench --json out.json --profile prof/

Starts its own Redis-protocol server (unless `--redis-url`), one RunnableK8s worker process
(`python -m runnable_k8s worker`), one plain Celery worker process (`celery -A
benchmarks.baseline worker`), both with the threads pool and the same concurrency, and one
LangServe server process (`uvicorn benchmarks.langserve_app:app`), then runs each workload on
every side that runs it in alternating order, round after round, so machine noise hits all of
them. Then counts Redis commands per invoke and per streamed token. Every output is checked; a
wrong answer fails the run (exit status 1).

See benchmarks/README.md for what is measured and why the baselines are fair.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.held import held_by_langchain
from benchmarks.processes import our_settings, start_baseline, start_langserve, start_ours
from benchmarks.report import figures, json_report, machine, table
from benchmarks.sides import Baseline, InProcess, LangServe, Ours, Side
from benchmarks.sizes import FULL, QUICK, BenchmarkError, Sizes
from benchmarks.targets import command_mix, targets, targets_table
from benchmarks.workloads import Results, run_rounds, warm_up


def measure(
    sides: list[Side], sizes: Sizes, log: Callable[[str], None]
) -> tuple[dict[str, Results], float]:
    """Warm up, read idle RSS, run the interleaved rounds, read idle RSS again."""
    results = {side.name: Results() for side in sides}
    for side in sides:
        warm_up(side, sizes)
    time.sleep(0.5)
    for side in sides:
        if side.worker is not None:
            results[side.name].rss_idle_mb = side.worker.rss_mb()
    log(f"warmed up; {sizes.rounds} interleaved rounds")
    started = time.perf_counter()
    run_rounds(sides, sizes, results, log)
    elapsed = time.perf_counter() - started
    time.sleep(0.5)
    for side in sides:
        if side.worker is not None:
            results[side.name].rss_idle_end_mb = side.worker.rss_mb()
    return results, elapsed


def memory(
    stack: contextlib.ExitStack,
    ours: Ours,
    settings: Any,
    sizes: Sizes,
    *,
    log_dir: Path,
    loglevel: str,
    out: Results,
    log: Callable[[str], None],
) -> None:
    """S3 on a worker of its own (concurrency `memory_runs`, its own queue), started only now
    so that its threads and start-up weigh on nothing else."""
    from benchmarks.streaming import s3

    held = settings.replace(queue=settings.queue + "-memory")
    worker = start_ours(
        held, sizes, log_dir, loglevel, name="memory", concurrency=sizes.memory_runs
    )
    stack.callback(worker.stop)
    worker.wait_ready(120.0)
    log(f"S3: {sizes.memory_runs} streaming runs on one worker process")
    s3(ours, worker, held, sizes, out)
    worker.stop()
    tokens = round(sizes.memory_seconds / sizes.memory_interval)
    log(f"S3 floor: what LangChain holds for a run of {tokens} tokens, in-process")
    out.s3_langchain_mib = held_by_langchain(tokens, sizes.memory_runs).runs_mib


def report(
    args: argparse.Namespace,
    sizes: Sizes,
    results: dict[str, Results],
    *,
    elapsed: float,
    idle_per_s: float,
    log: Callable[[str], None],
) -> None:
    """Print the tables (stdout) and write the JSON report if asked."""
    rows = figures(sizes, results["ours"], results["baseline"])
    goals = targets(sizes, results, memory=args.memory)
    info = machine()
    configuration = "quick" if args.quick else "full"
    load = info["load_average"][0]
    print(f"\nrunnable-k8s benchmark, {configuration} configuration, {info['date']}")
    print(f"machine: {info['cpus']} CPUs, {info['cpu']}, load average {load:.2f}, ", end="")
    print(f"Python {info['python']}")
    print(f"rounds: {sizes.rounds} interleaved, measured in {elapsed:.1f} s\n")
    print("Against plain Celery (ratio = RunnableK8s / plain Celery):\n")
    print(table(rows))
    print("\nAgainst the peers a user would pick instead (issue 14's targets):\n")
    print(targets_table(goals))
    print()
    print(command_mix(results, idle_per_s))
    if args.json:
        extra = {"redis_idle_commands_per_s": idle_per_s, "elapsed_s": elapsed}
        data = json_report(configuration, sizes, rows, goals, results=results, extra=extra)
        args.json.write_text(json.dumps(data, indent=2))
        log(f"wrote {args.json}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="smallest configuration (CI smoke test)"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 2)")
    parser.add_argument("--concurrency", type=int, help="pool threads per worker (default 100)")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also S3: 1,000 streaming runs (a token every 20 ms for 10 s) in one worker process",
    )
    parser.add_argument("--json", type=Path, help="also write every figure and sample here")
    parser.add_argument("--redis-url", help="use this Redis instead of starting an embedded one")
    parser.add_argument(
        "--loglevel", default="INFO", help="every worker's and the server's log level (INFO)"
    )
    parser.add_argument("--log-dir", type=Path, help="keep worker logs here (default: a temp dir)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="after the rounds, profile each workload into DIR (needs py-spy for workers)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.commands import count_commands
    from benchmarks.profiling import profile

    args = parse(argv)
    sizes = QUICK if args.quick else FULL
    changes = {k: v for k, v in (("rounds", args.rounds), ("concurrency", args.concurrency)) if v}
    sizes = Sizes(**{**asdict(sizes), **changes})

    def log(message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        log_dir = args.log_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="rk8s-bench-"))
        )
        log_dir.mkdir(parents=True, exist_ok=True)
        settings, base_queue = our_settings(stack, args.redis_url, "bench")
        redis_url = settings.require_redis_url()
        log(f"redis {redis_url.split('@')[-1]}; starting workers (concurrency {sizes.concurrency})")
        ours_worker = start_ours(settings, sizes, log_dir, args.loglevel)
        stack.callback(ours_worker.stop)
        base_worker = start_baseline(redis_url, base_queue, sizes, log_dir, args.loglevel)
        stack.callback(base_worker.stop)
        server, server_url = start_langserve(sizes, log_dir, args.loglevel)
        stack.callback(server.stop)
        for process in (ours_worker, base_worker, server):
            process.wait_ready()
        log("workers and server ready; warming up")

        ours = Ours(settings, sizes, ours_worker)
        stack.callback(ours.close)
        base = Baseline(redis_url, base_queue, sizes, base_worker)
        stack.callback(base.close)
        serve = LangServe(server_url, server)
        stack.callback(serve.close)
        local = InProcess()
        stack.callback(local.close)
        sides: list[Side] = [base, serve, local, ours]
        results, elapsed = measure(sides, sizes, log)
        log(f"counting Redis commands ({sizes.counted_invokes} invokes per side)")
        quiet = 1.0 if args.quick else 5.0
        idle = count_commands(
            sides,
            redis_url,
            items=sizes.counted_invokes,
            tokens=sizes.stream_tokens,
            quiet=quiet,
            results=results,
        )
        if args.memory:
            memory(
                stack,
                ours,
                settings,
                sizes,
                log_dir=log_dir,
                loglevel=args.loglevel,
                out=results["ours"],
                log=log,
            )
        report(args, sizes, results, elapsed=elapsed, idle_per_s=idle, log=log)
        if args.profile:
            profile(sides, sizes, args.profile, redis_url, log)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
