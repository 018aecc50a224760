"""Redis key names, in one place: every module that names a key imports this one. Per-run keys
share a hash tag so they live on one slot. New state (thread queues, priorities, rate limits,
webhook deliveries) names its keys here too."""

from __future__ import annotations

from typing import Final

PREFIX: Final = "rk8s"
CANCEL_CHANNEL: Final = f"{PREFIX}:cancel"
# kombu's hash of delivered-but-unacknowledged messages (running + reserved with late acks).
UNACKED: Final = "unacked"


def unacked_scan(mutex_key: str, visibility_timeout: float) -> str:
    """Set for one restore interval by the worker that scans kombu's `unacked` hash for messages
    past `visibility_timeout` (worker/transport.py), so the workers of one visibility timeout
    scan it once per interval (named after kombu's restore mutex, which a transport option may
    rename)."""
    return f"{mutex_key}:scanned:{visibility_timeout:g}"


def status(run_id: str) -> str:
    """Signed status record (string)."""
    return f"{PREFIX}:{{{run_id}}}:status"


def events(run_id: str) -> str:
    """Redis Stream of signed chunks and the final result."""
    return f"{PREFIX}:{{{run_id}}}:events"


def body(run_id: str) -> str:
    """A large request body that travels beside its Celery message."""
    return f"{PREFIX}:{{{run_id}}}:body"


def lock(run_id: str) -> str:
    """Held by the worker executing the run, so a duplicate delivery cannot run it twice."""
    return f"{PREFIX}:{{{run_id}}}:lock"


def cancel(run_id: str) -> str:
    """Signed cancellation request; checked before a run starts."""
    return f"{PREFIX}:{{{run_id}}}:cancel"


def message(run_id: str) -> str:
    """A copy of the run's Celery message, to re-enqueue it while the run is pending if the
    broker loses it (store/rescue.py); kept until the run ends (then dropped, or moved to
    `kept_request` for a dead letter), so a claim need not move it."""
    return f"{PREFIX}:{{{run_id}}}:message"


def kept_request(run_id: str) -> str:
    """The message copy of a dead-lettered run, moved here when it ends, for the dead-letter
    period (the signed request `failed retry` re-submits; already in Redis, so no secret)."""
    return f"{PREFIX}:{{{run_id}}}:request"


def kept_body(run_id: str) -> str:
    """The large body of a dead-lettered run (see `body`), kept beside its request."""
    return f"{PREFIX}:{{{run_id}}}:request-body"


def retry_of(run_id: str) -> str:
    """Signed link from a run made by `failed retry` to the run it retries."""
    return f"{PREFIX}:{{{run_id}}}:retry-of"


def dead_letters(queue: str) -> str:
    """Sorted set of dead-lettered runs of `queue` (score: when they ended). Only an index:
    every entry is checked against the run's signed records before it is shown or retried."""
    return f"{PREFIX}:failed:{queue}"


def pending(queue: str) -> str:
    """Sorted set of runs submitted to `queue` and not yet started (score: submission time)."""
    return f"{PREFIX}:pending:{queue}"


def rescue_lock(queue: str) -> str:
    """Held by the one worker sweeping `queue` for lost messages."""
    return f"{PREFIX}:rescue:{queue}"


# Cluster-wide limits (store/limits.py): every key under one hash tag, so one script can take a
# call's share of several limits at once.
LIMITS: Final = f"{PREFIX}:{{limits}}"
LIMIT_WAITING: Final = f"{LIMITS}:waiting"
"""Sorted set of model calls waiting on a limit now (score: when the entry lapses). KEDA and
`dev` read its size: calls that wait are not work more workers could do."""


def limit(key: str, part: str) -> str:
    """One limit's state; `part` is one of req, tok, tokn, conc, pause."""
    return f"{LIMITS}:{key}:{part}"


def wait_record(run_id: str) -> str:
    """Signed record of what a run is waiting on (kept beside its status while it waits)."""
    return f"{PREFIX}:{{{run_id}}}:waiting"


def webhook(run_id: str) -> str:
    """Signed record of the run's completion webhook: its URL and where delivery stands."""
    return f"{PREFIX}:{{{run_id}}}:webhook"


def webhooks(queue: str) -> str:
    """Sorted set of runs of `queue` with a webhook to deliver (score: when to look next)."""
    return f"{PREFIX}:webhooks:{queue}"
