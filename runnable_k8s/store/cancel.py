"""What cancelling a run writes to Redis: the one definition behind a producer's `cancel` and
a worker's answer to Celery's revoke (`runnable_k8s/worker/revocation.py`). Not on the path of
a run that is not cancelled, so it stays a WATCH/MULTI transaction: the status must be read and
verified (Redis cannot check a signature) before the cancellation is written.

A signed cancellation record, which the worker holding the run checks before it stops the run
(a bare publish from anyone who can reach Redis cancels nothing); for a run still queued, its
outcome at once, so waiters return even with no worker running and a worker that later
receives its message finds a finished run; and a publish on the cancel channel.
"""

from __future__ import annotations

import time
from typing import Any

from runnable_k8s.protocol import stream
from runnable_k8s.protocol.messages import Outcome, Protocol, RunStatus
from runnable_k8s.store import keys


def queue_cancel(pipe: Any, protocol: Protocol, status: RunStatus) -> None:
    """Queue the commands that cancel a run in state `status` (inside MULTI, after WATCH of
    its status key, so a run that changed state meanwhile is not cancelled from a stale one).
    """
    if status.done:
        return
    run_id = status.run_id
    ttl = int(protocol.settings.result_ttl)
    pipe.set(keys.cancel(run_id), protocol.seal_cancel(run_id), ex=ttl)
    if status.state == "queued":
        # Nobody has started it: record the outcome now, so waiters return at once even with
        # no worker running; a worker that later receives the message sees a finished run.
        outcome = Outcome(run_id, "cancelled", reason="cancelled before start", attempt=0)
        sealed = protocol.seal_outcome(outcome)
        pipe.xadd(keys.events(run_id), stream.signed_fields(stream.EntryKind.OUTCOME, sealed))
        pipe.expire(keys.events(run_id), ttl)
        cancelled = RunStatus(
            run_id,
            "cancelled",
            status.name,
            0,
            created_at=status.created_at,
            finished_at=time.time(),
            reason="cancelled before start",
        )
        pipe.set(keys.status(run_id), protocol.seal_status(cancelled), ex=ttl)
        pipe.zrem(keys.pending(protocol.settings.queue), run_id)
        pipe.delete(keys.message(run_id))
    pipe.publish(keys.CANCEL_CHANNEL, run_id)
