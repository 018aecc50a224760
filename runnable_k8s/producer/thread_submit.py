"""What the producer makes of the enqueue script's answer for runs on a thread (store/submit.py,
store/threads.py): a refused run (strategy reject) and the holder to stop (interrupt, rollback)."""

from __future__ import annotations

from collections.abc import Sequence

from runnable_k8s.errors import ThreadBusy
from runnable_k8s.protocol.messages import Protocol
from runnable_k8s.store import threads


def raise_busy(entered: Sequence[threads.Entered]) -> None:
    """Raises: ThreadBusy for the first run refused on a busy thread (its records were taken
    back by the same script)."""
    for run in entered:
        if run.verdict == "busy":
            raise ThreadBusy(
                f"run {run.run_id} refused: its thread is busy with run {run.holder} "
                '(multitask_strategy="reject"); nothing was enqueued',
                run_id=run.run_id,
                active_run_id=run.holder,
            )


def rollback_record(protocol: Protocol, run_id: str) -> tuple[str, bytes, int]:
    """(key, signed value, ttl s) asking the worker of `run_id` to discard its checkpoints
    when it is cancelled (strategy rollback)."""
    token = threads.rollback_token(run_id)
    ttl = int(protocol.settings.result_ttl)
    return threads.rollback_key(run_id), protocol.seal_cancel(token), ttl
