"""The real RunnableK8s worker with timestamps at each stage of a run, for `benchmarks.stages`.

    STAGES_FILE=/tmp/stamps.json python -m benchmarks.stamped_worker worker --concurrency=100

It wraps a few of the worker's own methods (and two of kombu's) with a function that records
`(stage, time.monotonic_ns())`; CLOCK_MONOTONIC is one clock for every process on the machine,
so these stamps line up with the producer's. The list is written to `STAGES_FILE` as JSON when
the worker exits. Nothing else changes: same code, same settings, same Celery. The wrapped
methods are private and may move; `tests/integration/test_stages_smoke.py` fails if one does.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

STAMPS: list[tuple[str, int]] = []


def _stamp(name: str) -> None:
    STAMPS.append((name, time.monotonic_ns()))


def stamp_sync(owner: Any, attribute: str, before: str | None, after: str | None) -> None:
    """Record `before` as `owner.attribute` is entered and `after` as it returns."""
    original: Callable[..., Any] = getattr(owner, attribute)

    @functools.wraps(original)
    def stamped(*args: Any, **kwargs: Any) -> Any:
        if before:
            _stamp(before)
        result = original(*args, **kwargs)
        if after:
            _stamp(after)
        return result

    setattr(owner, attribute, stamped)


def stamp_async(owner: Any, attribute: str, before: str | None, after: str | None) -> None:
    original: Callable[..., Any] = getattr(owner, attribute)

    @functools.wraps(original)
    async def stamped(*args: Any, **kwargs: Any) -> Any:
        if before:
            _stamp(before)
        result = await original(*args, **kwargs)
        if after:
            _stamp(after)
        return result

    setattr(owner, attribute, stamped)


def stamp_stream(owner: Any, attribute: str, before: str, first: str) -> None:
    """Record `before` as the async generator `owner.attribute` starts and `first` as it
    yields its first item (a stream's first chunk)."""
    original: Callable[..., Any] = getattr(owner, attribute)

    @functools.wraps(original)
    async def stamped(*args: Any, **kwargs: Any) -> Any:
        _stamp(before)
        stamped_first = False
        async for item in original(*args, **kwargs):
            if not stamped_first:
                _stamp(first)
                stamped_first = True
            yield item

    setattr(owner, attribute, stamped)


def install() -> None:
    from langchain_core.runnables.base import RunnableSequence

    from runnable_k8s.store import records
    from runnable_k8s.worker import execution, transport

    # The consumer thread has popped the message and records it as unacknowledged (the
    # worker's own transport: its QoS writes the record without kombu's `append`).
    stamp_sync(transport.QoS, "append", "consumer", None)
    # The Celery task starts in a pool thread (its first call reads any body beside it).
    stamp_sync(execution.Executor, "fetch_beside", "task", None)
    stamp_async(execution.Executor, "handle", "loop", None)
    stamp_async(execution.Executor, "_verify", None, "verified")
    stamp_async(records.RunRecords, "claim", "claim", "claimed")
    stamp_async(RunnableSequence, "ainvoke", "chain", "chain_done")
    # A stream (`benchmarks.stages --stream`): the chain starts, its first chunk comes out.
    stamp_stream(RunnableSequence, "astream", "chain", "chunk")
    stamp_async(records.RunRecords, "finish", "finish", "finished")


def main() -> None:
    install()
    path = os.environ["STAGES_FILE"]

    def dump() -> None:
        with open(path, "w") as out:
            json.dump(STAMPS, out)

    atexit.register(dump)
    from runnable_k8s.cli import main as cli

    cli(prog_name="runnable-k8s")


if __name__ == "__main__":
    main()
