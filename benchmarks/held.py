"""S3's floor: what LangChain itself keeps alive while the S3 chain streams, run in-process.

Every chunk a chat model yields stays referenced until its run ends: `BaseChatModel.astream`
keeps each `ChatGenerationChunk` in a list (for its end callback and merged output), and the
output parser's `_atransform_stream_with_config` tees its input and reads the tracing copy only
when the stream is over, so that copy buffers every `AIMessageChunk`. A run of `tokens` tokens
therefore holds about 2 KB per token at its last token (message, generation, their dicts and
text), wherever it runs: in a worker, in LangServe or in the caller's process.

This measures it with `tracemalloc` (Python objects only; the allocator's own overhead comes on
top in RSS): `sample` runs of the S3 chain (no delay: the bytes held do not depend on the pace),
each held at its last token, and the traced growth per run, scaled to `runs`.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Held:
    per_run_kib: float
    """Traced bytes one run holds at its last token, KiB..."""
    per_token_bytes: float
    """...per token..."""
    runs_mib: float
    """...and for the S3 run count, MiB."""


async def _hold(tokens: int, sample: int) -> int:
    from benchmarks.models import token_chain

    chain = token_chain(tokens)
    release = asyncio.Event()
    at_end: list[int] = []

    async def one(index: int, hold: bool) -> None:
        seen = 0
        async for _ in chain.astream({"input": f"run {index}"}):
            seen += 1
            if hold and seen == tokens:
                at_end.append(index)
                await release.wait()

    await one(-1, hold=False)  # LangChain's lazily built state is not a run's
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    runs = [asyncio.ensure_future(one(i, hold=True)) for i in range(sample)]
    while len(at_end) < sample and not any(run.done() for run in runs):
        await asyncio.sleep(0.01)
    held = tracemalloc.get_traced_memory()[0] - before
    release.set()
    await asyncio.gather(*runs)
    return held


def held_by_langchain(tokens: int, runs: int, sample: int = 20) -> Held:
    """The bytes LangChain holds for `sample` in-process runs of `tokens` tokens each."""
    started = tracemalloc.is_tracing()
    if not started:
        tracemalloc.start()
    try:
        held = asyncio.run(_hold(tokens, sample))
    finally:
        if not started:
            tracemalloc.stop()
    per_run = held / sample
    return Held(per_run / 1024, per_run / tokens, per_run * runs / MIB)
