"""Where W1's time goes: the median of each stage of one `invoke`, producer to worker and back;
with `--stream`, the same for S1's first token.

    python -m benchmarks.stages               # 300 invokes per side, 3 interleaved rounds
    python -m benchmarks.stages --quick       # a few invokes (the CI smoke test)
    python -m benchmarks.stages --stream      # 60 streams per side: RunnableK8s and LangServe

Starts its own Redis-protocol server, a RunnableK8s worker with timestamps at each stage
(`benchmarks.stamped_worker`: the real worker, a few methods wrapped) and the plain Celery
baseline worker, then runs W1 (sequential invokes of the small chain) on both sides, rounds
interleaved as in `benchmarks.bench`. Each of our runs is cut into stages by the stamps of both
processes (one monotonic clock for the machine), and the table gives each stage's median next
to the baseline's p50 measured in the same run. Stamping costs a few microseconds per stage.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import models, processes, report, sides, workloads
from benchmarks import sizes as sizing
from benchmarks.streaming import consume

# (from, to, what happens between): consecutive points of one run. Producer points: invoke,
# enqueue, reply, done; the others are the worker's (see benchmarks/stamped_worker.py).
STAGES: list[tuple[str, str, str]] = [
    ("invoke", "enqueue", "producer: LangChain callbacks, input encoded and signed, records built"),
    ("enqueue", "consumer", "enqueue transaction, until Celery's consumer has popped the message"),
    ("consumer", "task", "Celery: unacked record, task request, hand-off to a pool thread"),
    ("task", "loop", "pool thread hands the run to the worker's event loop"),
    ("loop", "verified", "signature checked, request opened"),
    ("verified", "claim", "'received' log record made (written at the loop's next turn)"),
    ("claim", "claimed", "claim script: lease taken, status 'running'"),
    ("claimed", "chain", "'started' log line, lease kept, runnable (cached) and input loaded"),
    ("chain", "chain_done", "the chain's own `ainvoke` (prompt, model, parser)"),
    ("chain_done", "finish", "output encoded and signed, final status sealed"),
    ("finish", "reply", "finish script (outcome, status, lease) until the producer's XREAD wakes"),
    ("reply", "done", "producer: outcome verified, output decoded, LangChain callbacks"),
]  # fmt: skip

# The same for a stream's first token (`--stream`): "done" is the caller holding it.
STREAM_STAGES: list[tuple[str, str, str]] = [
    ("invoke", "enqueue", "producer: LangChain's astream set up, input signed, records built"),
    *STAGES[1:7],
    ("claimed", "chain", "'started' log line, lease kept, runnable (cached) and input loaded"),
    ("chain", "chunk", "the chain's own `astream` until its first chunk (prompt, model, parser)"),
    ("chunk", "reply", "chunk sealed, first entry appended (a script) until the XREAD wakes"),
    ("reply", "done", "producer: entry verified, chunk decoded, LangChain's astream hands it on"),
]  # fmt: skip


class Stamps:
    """The producer's stamps, taken by wrapping two parts of its Redis client."""

    def __init__(self) -> None:
        self.points: list[tuple[str, int]] = []

    def mark(self, name: str) -> None:
        self.points.append((name, time.monotonic_ns()))

    def install(self) -> None:
        from runnable_k8s.producer import aclient, client, waiting

        # The waits parse what the process's stream reader hands them (producer/waiting.py).
        parse = waiting.parse_entries
        mark = self.mark

        class StampedSubmission(client.Submission):
            """The submission's records built (signed, sealed): the enqueue script goes next."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                mark("enqueue")

        def stamped_parse(*args: Any) -> Any:
            self.mark("reply")
            return parse(*args)

        client.Submission = StampedSubmission  # type: ignore[misc]
        aclient.Submission = StampedSubmission  # type: ignore[misc]
        waiting.parse_entries = stamped_parse  # type: ignore[assignment]


def runs(producer: list[tuple[str, int]], worker: list[tuple[str, int]]) -> list[dict[str, int]]:
    """One dict of point -> ns per invoke: the producer's points, and the first of each of the
    worker's points that fall between its enqueue and its return."""
    found: list[dict[str, int]] = []
    times = [t for _, t in worker]
    current: dict[str, int] = {}
    for name, t in producer:
        if name == "invoke":
            current = {"invoke": t}
        elif name in ("enqueue", "reply"):
            current.setdefault(name, t)
        elif name == "done" and "enqueue" in current:
            current["done"] = t
            low = bisect.bisect_left(times, current["enqueue"])
            high = bisect.bisect_right(times, t)
            for point, when in worker[low:high]:
                current.setdefault(point, when)
            found.append(current)
    return found


def table(
    samples: list[dict[str, int]],
    ours_ms: list[float],
    stages: list[tuple[str, str, str]] = STAGES,
) -> str:
    """The stage table: each stage's median, then their sum."""
    ours_p50 = statistics.median(ours_ms)
    lines = [
        "| stage | median | share of our median |",
        "|---|---:|---:|",
    ]
    total = 0.0
    for start, end, what in stages:
        spans = [(s[end] - s[start]) / 1e6 for s in samples if start in s and end in s]
        if not spans:
            raise sizing.BenchmarkError(f"no run had both stamps {start!r} and {end!r}")
        median = statistics.median(spans)
        total += median
        lines.append(f"| {what} | {median:.3f} ms | {median / ours_p50:.0%} |")
    lines.append(f"| **sum of the stage medians** | **{total:.2f} ms** | |")
    return "\n".join(lines)


def w1_summary(ours_ms: list[float], base_ms: list[float]) -> str:
    ours_p50, base_p50 = statistics.median(ours_ms), statistics.median(base_ms)
    return (
        f"RunnableK8s p50 {ours_p50:.2f} ms over {len(ours_ms)} invokes; plain Celery p50 "
        f"{base_p50:.2f} ms in the same run (ratio {ours_p50 / base_p50:.2f}x; the 0.8x target "
        f"is {0.8 * base_p50:.2f} ms)."
    )


def stream_summary(ours_ms: list[float], serve_ms: list[float]) -> str:
    ours, serve = statistics.median(ours_ms), statistics.median(serve_ms)
    return (
        f"RunnableK8s first token, median {ours:.2f} ms over {len(ours_ms)} streams; LangServe "
        f"{serve:.2f} ms over {len(serve_ms)} in the same run (ratio {ours / serve:.2f}x; the "
        f"target is <= 1x)."
    )


def measure(
    ours: sides.Ours, base: sides.Baseline, producer: Stamps, invokes: int, rounds: int
) -> dict[str, workloads.Results]:
    """W1 on both sides, rounds interleaved, our invokes stamped at their start and end."""
    producer.install()
    invoke: Callable[[dict[str, str]], str] = ours.invoke_chain

    def stamped_invoke(payload: dict[str, str]) -> str:
        producer.mark("invoke")
        answer = invoke(payload)
        producer.mark("done")
        return answer

    ours.invoke_chain = stamped_invoke  # type: ignore[method-assign]
    results = {"ours": workloads.Results(), "baseline": workloads.Results()}
    for side in (ours, base):
        workloads.w1(side, 5, 90_000, workloads.Results())  # warm up
    producer.points.clear()
    offset = 0
    for number, part in enumerate(sizing.split(invokes, rounds)):
        order: list[sides.Side] = [base, ours] if number % 2 == 0 else [ours, base]
        for side in order:
            workloads.w1(side, part, offset, results[side.name])
        offset += part
    return results


def measure_stream(
    ours: sides.Ours,
    serve: sides.LangServe,
    producer: Stamps,
    *,
    streams: int,
    rounds: int,
    tokens: int,
) -> dict[str, list[float]]:
    """S1's stream on both sides, rounds interleaved and the sides taking turns stream by
    stream: ms from the call to the first non-empty chunk, each of ours stamped."""
    producer.install()
    firsts: dict[str, list[float]] = {"ours": [], "langserve": []}

    async def first_token(side: sides.Side, stamped: bool) -> float:
        if stamped:
            producer.mark("invoke")
        chunks = side.astream_tokens(tokens, {"input": "stream"})
        first, _, text = await consume(chunks, (lambda: producer.mark("done")) if stamped else None)
        if text != models.streamed_text(tokens):
            raise sizing.BenchmarkError(f"{side.name}: wrong stream {text[:100]!r}")
        return first * 1000

    for side in (ours, serve):
        for _ in range(3):
            side.run(first_token(side, False))  # warm up
    producer.points.clear()
    for number, part in enumerate(sizing.split(streams, rounds)):
        order: list[sides.Side] = [serve, ours] if number % 2 == 0 else [ours, serve]
        for _ in range(part):
            for side in order:
                firsts[side.name].append(side.run(first_token(side, side is ours)))
    return firsts


def _worker_points(path: Path) -> list[tuple[str, int]]:
    # Three threads append to the list: sorted, for the search by time.
    return sorted(((str(n), int(t)) for n, t in json.loads(path.read_text())), key=lambda p: p[1])


def _heading(what: str) -> None:
    info = report.machine()
    print(f"\n{what}, {info['date']}, {info['cpus']} CPUs, {info['cpu']}, ", end="")
    print(f"load average {info['load_average'][0]:.2f}\n")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stages", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--invokes", type=int, help="invokes per side (default 300, quick 10)")
    parser.add_argument(
        "--stream", action="store_true", help="S1's first token instead of W1, against LangServe"
    )
    parser.add_argument("--streams", type=int, help="with --stream: per side (default 60, quick 4)")
    parser.add_argument("--tokens", type=int, help="with --stream: per stream (default 2000)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="a few invokes (CI smoke test)")
    parser.add_argument("--redis-url", help="use this Redis instead of starting an embedded one")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    invokes = args.invokes or (10 if args.quick else 300)
    rounds = args.rounds or (1 if args.quick else 3)

    def log(message: str) -> None:
        print(f"[stages {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    streams = args.streams or (4 if args.quick else 60)
    tokens = args.tokens or 2000
    sizes = sizing.Sizes(
        invokes, 1, 1, 0.0, 1, 1000, rounds=rounds, concurrency=100, stream_tokens=tokens
    )
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rk8s-stages-")))
        settings, base_queue = processes.our_settings(stack, args.redis_url, "stages")
        redis_url = settings.require_redis_url()
        stamps_file = folder / "worker-stamps.json"
        ours_worker = processes.start_ours(
            settings,
            sizes,
            folder,
            "INFO",
            module="benchmarks.stamped_worker",
            extra_env={"STAGES_FILE": str(stamps_file)},
        )
        stack.callback(ours_worker.stop)
        if args.stream:
            base_worker, url = processes.start_langserve(sizes, folder, "INFO")
        else:
            base_worker = processes.start_baseline(redis_url, base_queue, sizes, folder, "INFO")
        stack.callback(base_worker.stop)
        ours_worker.wait_ready()
        base_worker.wait_ready()
        ours = sides.Ours(settings, sizes, ours_worker)
        stack.callback(ours.close)
        producer = Stamps()
        if args.stream:
            serve = sides.LangServe(url, base_worker)
            stack.callback(serve.close)
            firsts = measure_stream(
                ours, serve, producer, streams=streams, rounds=rounds, tokens=tokens
            )
            log(f"{streams} streams of {tokens} tokens per side in {rounds} interleaved rounds")
        else:
            base = sides.Baseline(redis_url, base_queue, sizes, base_worker)
            stack.callback(base.close)
            results = measure(ours, base, producer, invokes, rounds)
            log(f"{invokes} invokes per side in {rounds} interleaved rounds")
        ours_worker.stop()  # writes the worker's stamps
        samples = runs(producer.points, _worker_points(stamps_file))
        if args.stream:
            _heading(f"S1 first-token stages ({tokens} tokens per stream)")
            text = table(samples, firsts["ours"], STREAM_STAGES)
            summary = stream_summary(firsts["ours"], firsts["langserve"])
        else:
            _heading("W1 stages")
            ours_ms, base_ms = results["ours"].w1_latencies_ms, results["baseline"].w1_latencies_ms
            text = table(samples, ours_ms)
            summary = w1_summary(ours_ms, base_ms)
        print(text, summary, "", sep="\n\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except sizing.BenchmarkError as exc:
        print(f"stages failed: {exc}", file=sys.stderr)
        sys.exit(1)
