"""Redis key names, in one place. Per-run keys share a hash tag so they live on one slot."""

from __future__ import annotations

from typing import Final

PREFIX: Final = "rk8s"
CANCEL_CHANNEL: Final = f"{PREFIX}:cancel"
# kombu's hash of delivered-but-unacknowledged messages (running + reserved with late acks).
UNACKED: Final = "unacked"


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
    """A copy of the run's Celery message, kept until the run starts, to re-enqueue it if the
    broker loses it (see worker/rescue.py)."""
    return f"{PREFIX}:{{{run_id}}}:message"


def kept_request(run_id: str) -> str:
    """The message copy, moved here when a worker claims the run: kept while it runs and, if
    it ends a dead letter, for the dead-letter period (the signed request `failed retry`
    re-submits; already in Redis, so no secret)."""
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


def webhook(run_id: str) -> str:
    """Signed record of the run's completion webhook: its URL and where delivery stands."""
    return f"{PREFIX}:{{{run_id}}}:webhook"


def webhooks(queue: str) -> str:
    """Sorted set of runs of `queue` with a webhook to deliver (score: when to look next)."""
    return f"{PREFIX}:webhooks:{queue}"
