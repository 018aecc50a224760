"""The streaming workloads: S1, one stream of many tokens from a model that yields as fast as
it can (tokens/s and first-token latency); S2, many such streams at once (chunks/s); S3
(`--memory`), one worker process holding many slow streaming runs at once (its RSS)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from benchmarks.processes import AnyWorker, PeakRss
from benchmarks.sides import Ours, Side
from benchmarks.sizes import BenchmarkError, Sizes

if TYPE_CHECKING:
    from benchmarks.workloads import Results


async def consume(
    chunks: Any, on_first: Callable[[], None] | None = None
) -> tuple[float, float, str]:
    """Consume one stream: seconds to its first non-empty chunk, seconds to its end, its text.
    (LangChain ends a model's stream with an empty chunk: it is not a token.) `on_first` is
    called as the first one arrives (`benchmarks.stages --stream` stamps it)."""
    start = time.perf_counter()
    first = 0.0
    parts: list[str] = []
    async for chunk in chunks:
        if chunk and not first:
            first = time.perf_counter() - start
            if on_first is not None:
                on_first()
        parts.append(chunk)
    return first, time.perf_counter() - start, "".join(parts)


def s1(side: Side, tokens: int, out: Results) -> None:
    from benchmarks.models import streamed_text

    first, total, text = side.run(consume(side.astream_tokens(tokens, {"input": "stream"})))
    if text != streamed_text(tokens):
        raise BenchmarkError(f"{side.name} S1: wrong stream {text[:100]!r}...{text[-100:]!r}")
    out.s1_tokens_per_s.append(tokens / total)
    out.s1_first_token_ms.append(first * 1000)


def s2(side: Side, streams: int, tokens: int, out: Results) -> None:
    from benchmarks.models import streamed_text

    async def all_at_once() -> list[tuple[float, float, str]]:
        return await asyncio.gather(
            *(
                consume(side.astream_tokens(tokens, {"input": f"stream {i}"}))
                for i in range(streams)
            )
        )

    start = time.perf_counter()
    done = side.run(all_at_once())
    wall = time.perf_counter() - start
    want = streamed_text(tokens)
    for _, _, text in done:
        if text != want:
            raise BenchmarkError(f"{side.name} S2: wrong stream {text[:100]!r}")
    out.s2_chunks_per_s.append(streams * tokens / wall)


def s3(ours: Ours, worker: AnyWorker, settings: Any, sizes: Sizes, out: Results) -> None:
    """`memory_runs` streaming runs at once, each from a model that yields a token every
    `memory_interval` s for `memory_seconds`, on one worker process (`worker`, concurrency
    `memory_runs`, its own queue in `settings`): its peak RSS while it holds them all.

    The runs are submitted with `stream=True` (the worker publishes every token to each run's
    stream) and read once they end, each checked: a caller that followed 1,000 streams at once
    would compete with the worker for the same cores."""
    from benchmarks.models import streamed_text

    tokens = round(sizes.memory_seconds / sizes.memory_interval)
    chain = ours.token_chain(tokens, sizes.memory_interval, settings=settings)
    warm = ours.token_chain(3, settings=settings).astream({"input": "warm-up"})
    ours.run(consume(warm))  # the worker loads its code before it is measured
    out.s3_rss_idle_mb = worker.rss_mb()

    async def results(runs: list[Any]) -> list[Any]:
        reading = asyncio.Semaphore(64)

        async def one(run: Any) -> Any:
            async with reading:
                return await run.aresult()

        return await asyncio.gather(*(one(run) for run in runs), return_exceptions=True)

    with PeakRss(worker.pid) as peak:
        start = time.perf_counter()
        runs = [chain.submit({"input": f"run {i}"}, stream=True) for i in range(sizes.memory_runs)]
        done = ours.run(results(runs))
        out.s3_wall_s = time.perf_counter() - start
    out.s3_rss_peak_mb = peak.peak_mb
    want = streamed_text(tokens)
    # A run that failed is a figure (the worker could not hold them all), not a wrong answer.
    failed = [d for d in done if isinstance(d, BaseException)]
    wrong = sum(d != want for d in done if not isinstance(d, BaseException))
    if wrong:
        raise BenchmarkError(f"S3: {wrong} of {sizes.memory_runs} runs gave a wrong answer")
    out.s3_runs = len(done) - len(failed)
    out.s3_failed = len(failed)
    out.s3_error = str(failed[0]).splitlines()[0][:300] if failed else ""
