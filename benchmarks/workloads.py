"""The workloads, each timed on one side and checked: W1 to W4 (and the rounds that interleave
every workload over every side), and what they record."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.processes import PeakRss
from benchmarks.sides import Side
from benchmarks.sizes import MB, BenchmarkError, Sizes, split


@dataclass
class Results:
    w1_latencies_ms: list[float] = field(default_factory=list)
    w2_items_per_s: list[float] = field(default_factory=list)
    w3_wall_s: list[float] = field(default_factory=list)
    w4_mb_per_s: list[float] = field(default_factory=list)
    rss_idle_mb: float = 0.0
    rss_peak_w3_mb: list[float] = field(default_factory=list)
    rss_idle_end_mb: float = 0.0
    s1_tokens_per_s: list[float] = field(default_factory=list)
    """One stream of `stream_tokens`: tokens over the time from the call to the last chunk."""
    s1_first_token_ms: list[float] = field(default_factory=list)
    """...and the time from the call to the first non-empty chunk."""
    s2_chunks_per_s: list[float] = field(default_factory=list)
    """`streams` streams of `stream_chunks` at once: chunks of all over the wall time."""
    commands_per_invoke: float = math.nan
    invoke_commands: dict[str, float] = field(default_factory=dict)
    """Redis commands per W1 invoke, by command (script-internal calls included)."""
    commands_per_token: float = math.nan
    token_commands: dict[str, float] = field(default_factory=dict)
    """Redis commands per streamed token, by command (the run's own commands included)."""
    s3_runs: int = 0
    """S3: runs that finished (correctly: a wrong answer fails the benchmark)..."""
    s3_failed: int = 0
    """...and runs that failed, the first one's error."""
    s3_error: str = ""
    s3_wall_s: float = math.nan
    s3_rss_idle_mb: float = math.nan
    s3_rss_peak_mb: float = math.nan
    """`--memory`: one worker process holding `memory_runs` streaming runs."""
    s3_langchain_mib: float = math.nan
    """What LangChain alone keeps alive for that many runs at their last token (in-process,
    traced Python objects): the floor under S3's RSS (benchmarks/held.py)."""


def question(i: int) -> dict[str, str]:
    return {"input": f"What does Pokemon number {i} evolve from?"}


def payload(size: int, salt: int) -> str:
    # ASCII without characters JSON escapes, different per call (no caching anywhere).
    unit = f"{salt:08d}abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return (unit * (size // len(unit) + 1))[:size]


def check(side: str, what: str, got: Any, want: Any) -> None:
    if got != want:
        raise BenchmarkError(
            f"{side} {what}: wrong output {str(got)[:200]!r}, want {str(want)[:200]!r}"
        )


def w1(side: Side, count: int, offset: int, out: Results) -> None:
    from benchmarks.models import expected

    for i in range(offset, offset + count):
        one = question(i)
        start = time.perf_counter()
        got = side.invoke_chain(one)
        out.w1_latencies_ms.append((time.perf_counter() - start) * 1000)
        check(side.name, "W1", got, expected(one["input"]))


def w2(side: Side, items: int, out: Results) -> None:
    from benchmarks.models import expected

    payloads = [question(i) for i in range(items)]
    start = time.perf_counter()
    got = side.batch_chain(payloads)
    out.w2_items_per_s.append(items / (time.perf_counter() - start))
    check(side.name, "W2", got, [expected(p["input"]) for p in payloads])


def w3(side: Side, items: int, out: Results) -> None:
    from benchmarks.models import expected

    assert side.worker is not None
    payloads = [question(i) for i in range(items)]
    with PeakRss(side.worker.pid) as peak:
        start = time.perf_counter()
        got = side.batch_slow(payloads)
        out.w3_wall_s.append(time.perf_counter() - start)
    out.rss_peak_w3_mb.append(peak.peak_mb)
    check(side.name, "W3", got, [expected(p["input"]) for p in payloads])


def w4(side: Side, count: int, size: int, salt: int, out: Results) -> None:
    payloads = [payload(size, salt + i) for i in range(count)]
    start = time.perf_counter()
    for one in payloads:
        got = side.echo(one)
        if got != one:  # not check(): never format a megabyte into a message
            raise BenchmarkError(f"{side.name} W4: output differs from input")
    # Each invoke carries `size` bytes to the worker and the same back: MB of input per second.
    out.w4_mb_per_s.append(count * size / MB / (time.perf_counter() - start))


def warm_up(side: Side, sizes: Sizes) -> None:
    """Load code and caches on both ends before anything is measured."""
    from benchmarks.streaming import s1, s2

    scratch = Results()
    w1(side, 3, 10_000, scratch)
    if side.batches:
        w2(side, 8, scratch)
        w3(side, 4, scratch)
        w4(side, 1, min(sizes.w4_bytes, 100_000), 99, scratch)
    if side.streams:
        for tokens in (sizes.stream_tokens, sizes.stream_chunks):
            s1(side, tokens, scratch)
        s2(side, 2, sizes.stream_chunks, scratch)


def run_rounds(
    sides: list[Side], sizes: Sizes, results: dict[str, Results], log: Callable[[str], None]
) -> None:
    """Every workload on every side that runs it, round after round; the order of the sides
    reverses every round (ABCD, DCBA, ...) so that noise and warmth fall on all of them."""
    from benchmarks.streaming import s1, s2

    w1_parts = split(sizes.w1_invokes, sizes.rounds)
    w1_offset = 0
    for number in range(sizes.rounds):
        order = sides if number % 2 == 0 else list(reversed(sides))
        batching = [side for side in order if side.batches]
        streaming = [side for side in order if side.streams]
        for side in order:
            w1(side, w1_parts[number], w1_offset, results[side.name])
        w1_offset += w1_parts[number]
        for side in batching:
            w2(side, sizes.w2_items, results[side.name])
        for side in batching:
            w3(side, sizes.w3_items, results[side.name])
        for side in batching:
            w4(side, sizes.w4_invokes, sizes.w4_bytes, number * 1000, results[side.name])
        for _ in range(sizes.s1_streams):
            for side in streaming:
                s1(side, sizes.stream_tokens, results[side.name])
        for side in streaming:
            s2(side, sizes.streams, sizes.stream_chunks, results[side.name])
        log(f"round {number + 1}/{sizes.rounds} done ({' then '.join(s.name for s in order)})")
