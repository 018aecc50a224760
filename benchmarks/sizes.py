"""What the benchmark runs: its sizes (full and quick), and the error a wrong answer raises."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 1_000_000


class BenchmarkError(RuntimeError):
    """A workload returned a wrong answer, or a process did not start."""


@dataclass(frozen=True)
class Sizes:
    w1_invokes: int
    """W1: sequential invokes per side, in total (split over the rounds)."""
    w2_items: int
    """W2: inputs of one `batch` (every round)."""
    w3_items: int
    """W3: inputs of one `abatch` whose model awaits `w3_delay` (every round)."""
    w3_delay: float
    w4_invokes: int
    """W4: invokes with a large input and output (every round)."""
    w4_bytes: int
    rounds: int
    concurrency: int
    """Pool threads of each worker process (RunnableK8s: runs held at once)."""
    stream_tokens: int = 2000
    """S1: tokens of one stream from a model that yields as fast as it can..."""
    s1_streams: int = 5
    """...streams of it per side in each round, the sides taking turns stream by stream (the
    first token is one sample per stream: a median of three, one per round, moved by 20 %
    between full runs of the same code)."""
    streams: int = 50
    """S2: streams run at once (every round)..."""
    stream_chunks: int = 200
    """...of this many tokens each."""
    counted_invokes: int = 500
    """Redis commands: invokes counted per side (one stream of `stream_tokens` for tokens)."""
    memory_runs: int = 1000
    """S3 (`--memory`): streaming runs held at once by one worker process..."""
    memory_interval: float = 0.02
    """...whose model yields a token every this many seconds..."""
    memory_seconds: float = 10.0
    """...for this long."""


FULL = Sizes(300, 2000, 400, 0.2, 50, 1 * MB, rounds=3, concurrency=100)
QUICK = Sizes(
    5,
    50,
    20,
    0.2,
    2,
    100_000,
    rounds=2,
    concurrency=100,
    stream_tokens=100,
    s1_streams=1,
    streams=5,
    stream_chunks=20,
    counted_invokes=10,
    memory_runs=20,
    memory_seconds=1.0,
)


def split(total: int, parts: int) -> list[int]:
    """`total` in `parts` nearly equal parts (W1's invokes over the rounds)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
