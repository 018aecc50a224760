"""Celery's revoke (Flower's Revoke and Terminate, `celery control revoke` and `terminate`)
cancels a run exactly as a producer's `cancel` does.

Why: Celery's own revoke cannot stop our runs, and can lose them. With `terminate` it asks the
pool to kill the process running the task, which the threads pool cannot do (a `pidbox command
error: NotImplementedError`, while Flower answers "Revoked" and the run goes on). Without, it
only adds the id to the revoked set in the receiving worker's memory, and a message with that
id is acknowledged and dropped on delivery with no outcome: the caller waits until it gives
up, `status` says queued, and the rescue sweep enqueues the run's kept copy again, to be
dropped again. A worker started later never heard of the revoke and runs it anyway.

So the worker replaces the `revoke` and `terminate` commands with its own, which leave
Celery's revoked set alone and write the run's cancellation to Redis (`store/cancel.py`):
a queued run is recorded cancelled at once and never starts, a running one is cancelled by the
worker holding it (`worker/cancellation.py`), a finished or unknown one is left as it is. The
`signal` argument means nothing here: a run is cancelled on its event loop, never killed.
Should Celery still drop one of our messages as revoked (ids it learned another way, such as
a `hello` command), the run is cancelled the same way, so it never loses its outcome.

Trust: remote-control commands come through Redis unsigned, so a revoke is as trusted as
write access to Redis; the worker signs the cancellation on the sender's behalf. Anyone with
that access can already drop queue items and records and so stop any run from finishing; what
they gain here is a signed "cancelled" outcome instead. `RUNNABLE_K8S_REMOTE_CONTROL=false`
turns every remote-control command off (Flower then only watches events).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final, Literal

from celery.signals import task_revoked
from celery.worker.control import Panel
from redis.exceptions import RedisError, WatchError

from runnable_k8s import connections
from runnable_k8s.errors import MessageRejected
from runnable_k8s.protocol.messages import Protocol
from runnable_k8s.protocol.task_message import TASK_NAME
from runnable_k8s.store import keys
from runnable_k8s.store.cancel import queue_cancel
from runnable_k8s.store.threads import TransactionThreads

log = logging.getLogger("runnable_k8s.worker")

Verdict = Literal["cancelled", "cancelling", "finished", "unknown", "busy"]

# A run id is 32 hex characters; a longer "id" names no run, and is not worth a round trip.
_MAX_ID: Final = 100
_WATCH_RETRIES: Final = 20
_MAX_IDS: Final = 1000


class Revoker:
    """Cancels runs named by remote control. Runs on the consumer's thread (where Celery
    calls remote-control commands and `task_revoked`), with a blocking client of its own
    whose timeouts keep a Redis outage from wedging that thread."""

    def __init__(self, redis_url: str, protocol: Protocol) -> None:
        self._redis = connections.sync_client(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._protocol = protocol
        self._threads = TransactionThreads(self._redis, protocol.settings)

    def cancel(self, run_id: str) -> Verdict:
        """Cancel one run as a producer's `cancel` does; say what became of it."""
        with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_RETRIES):
                try:
                    pipe.watch(keys.status(run_id))  # type: ignore[no-untyped-call]
                    raw = pipe.get(keys.status(run_id))
                    if not isinstance(raw, bytes):
                        return "unknown"
                    try:
                        status = self._protocol.open_status(raw, run_id)
                    except MessageRejected:
                        return "unknown"  # forged, or a run of producers with another key
                    if status.done:
                        return "finished"
                    pipe.multi()
                    queue_cancel(pipe, self._protocol, status)
                    if status.state == "queued":  # out of its thread's line (if any)
                        self._threads.queue_leave(pipe, run_id, now=time.time())
                    pipe.execute()
                    return "cancelled" if status.state == "queued" else "cancelling"
                except WatchError:
                    continue
        return "busy"

    def _cancel_logged(self, run_id: str, why: str) -> Verdict:
        verdict = self.cancel(run_id)
        # Every one is logged: the command itself is unsigned, the log is its only trace.
        log.info("%s run=%s: %s", why, run_id, verdict)
        return verdict

    def revoke(
        self,
        state: Any,
        task_id: Any = None,
        terminate: Any = False,
        signal: Any = None,
        **_: Any,
    ) -> dict[str, str]:
        """Cancel runs by id (or list of ids), as `runnable-k8s cancel` does."""
        given = task_id if isinstance(task_id, (list, tuple)) else [task_id]
        ids = [i for i in given[:_MAX_IDS] if isinstance(i, str) and 0 < len(i) <= _MAX_ID]
        why = "terminate by remote control" if terminate else "revoke by remote control"
        verdicts: dict[Verdict, list[str]] = {}
        try:
            for run_id in dict.fromkeys(ids):
                verdicts.setdefault(self._cancel_logged(run_id, why), []).append(run_id)
        except RedisError as exc:
            log.warning("%s failed: Redis unavailable: %s", why, exc)
            return {"error": f"Redis unavailable: {exc}"}
        if len(ids) < len(given):
            verdicts.setdefault("unknown", []).append(f"{len(given) - len(ids)} invalid id(s)")
        text = "; ".join(f"{verdict}: {', '.join(runs)}" for verdict, runs in verdicts.items())
        return {"ok": text or "no run named"}

    def terminate(
        self, state: Any, signal: Any = None, task_id: Any = None, **_: Any
    ) -> dict[str, str]:
        """Cancel runs by id (the signal is not used: runs are cancelled, never killed)."""
        return self.revoke(state, task_id, terminate=True, signal=signal)

    def on_revoked(
        self, sender: Any = None, request: Any = None, expired: Any = False, **_: Any
    ) -> None:
        """Celery dropped one of our messages as revoked: record the run's cancellation.
        (An expired one is not ours: our messages carry no expiry for Celery to check.)"""
        run_id = getattr(request, "id", None)
        if getattr(sender, "name", None) != TASK_NAME or expired or not isinstance(run_id, str):
            return
        if 0 < len(run_id) <= _MAX_ID:
            try:
                self._cancel_logged(run_id, "message dropped by Celery as revoked")
            except RedisError as exc:
                log.warning("could not cancel revoked run=%s: %s", run_id, exc)


def install(redis_url: str, protocol: Protocol) -> Revoker:
    """Replace Celery's `revoke` and `terminate` commands in this process and follow
    `task_revoked`. Celery keeps remote-control commands in one registry per process; the
    worker process runs one app."""
    revoker = Revoker(redis_url, protocol)
    Panel.register(
        revoker.revoke, name="revoke", variadic="task_id", signature="[id1 [id2 [... [idN]]]]"
    )
    Panel.register(
        revoker.terminate,
        name="terminate",
        args=[("signal", str)],
        variadic="task_id",
        signature="<signal> [id1 [id2 [... [idN]]]]",
    )
    task_revoked.connect(revoker.on_revoked, weak=False)
    return revoker
