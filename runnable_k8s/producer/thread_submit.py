"""What the producer makes of the thread scripts' replies at submission (store/threads.py):
a refused run (strategy reject) and the holder to stop (interrupt, rollback)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runnable_k8s.errors import ThreadBusy
from runnable_k8s.protocol.messages import Protocol
from runnable_k8s.store import threads

ThreadRuns = Sequence[tuple[str, str, int]]
"""(run id, thread id, message life s) of the runs of one submission that have a thread."""


def entered_runs(runs: ThreadRuns, replies: list[Any]) -> list[threads.Entered]:
    """The thread scripts' replies: the last ones of the enqueue transaction."""
    if not runs or len(replies) < len(runs):
        # No replies: a durable enqueue found its write applied without seeing the reply
        # (producer/durable.py); the runs are queued or waiting, nothing more to do.
        return []
    tail = replies[-len(runs) :]
    return [threads.parse_entered(run[0], reply) for run, reply in zip(runs, tail, strict=True)]


def raise_busy(runs: ThreadRuns, replies: list[Any]) -> None:
    """Raises: ThreadBusy for the first run refused on a busy thread (its records were taken
    back by the same transaction)."""
    for entered in entered_runs(runs, replies):
        if entered.verdict == "busy":
            raise ThreadBusy(
                f"run {entered.run_id} refused: its thread is busy with run {entered.holder} "
                '(multitask_strategy="reject"); nothing was enqueued',
                run_id=entered.run_id,
                active_run_id=entered.holder,
            )


def rollback_record(protocol: Protocol, run_id: str) -> tuple[str, bytes, int]:
    """(key, signed value, ttl s) asking the worker of `run_id` to discard its checkpoints
    when it is cancelled (strategy rollback)."""
    token = threads.rollback_token(run_id)
    ttl = int(protocol.settings.result_ttl)
    return threads.rollback_key(run_id), protocol.seal_cancel(token), ttl
