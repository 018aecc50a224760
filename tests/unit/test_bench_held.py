"""The S3 floor (benchmarks/held.py): what LangChain itself keeps alive for a streaming run
grows with the tokens it has streamed, so the measurement must see it grow."""

from __future__ import annotations

from benchmarks.held import held_by_langchain


def test_langchain_holds_every_chunk_of_a_running_stream() -> None:
    short = held_by_langchain(tokens=10, runs=100, sample=5)
    long = held_by_langchain(tokens=200, runs=100, sample=5)
    # Each chunk a chat model yields stays referenced until the run ends: a model chunk
    # and its generation, several hundred bytes at the least.
    assert long.per_run_kib > short.per_run_kib + 190 * 500 / 1024
    assert long.per_token_bytes > 500
    assert long.runs_mib == long.per_run_kib * 100 / 1024
