"""Why a run ended without succeeding: the `reason` of its outcome and of its final status.

A reason is text on the wire (inside the signed outcome and status), and its grammar lives
here, in one place, for both sides: a worker (or, for `UNVERIFIED`, the producer) writes it
with `Reason` and `rejected`/`unverified`; a producer reads it with `reason_of`, never by
looking at the text itself. The text is kept exactly as the previous version wrote it, so an
outcome recorded by an older worker reads the same, and an older producer still understands a
newer worker's outcomes (a rolling upgrade has both). Any other reason is free text: a remote
error's type name (a failed or retrying status), or a state's own name.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Reason(StrEnum):
    """The kinds of reason a caller's error depends on."""

    TIMEOUT = "timeout"
    """Failed: the worker's time limit cancelled the run."""
    INTERRUPTED = "interrupted"
    """Failed: the run's stream already held an earlier delivery's entries (its worker was
    lost mid-stream); it cannot start over without showing chunks twice."""
    REJECTED = "rejected"
    """Failed: the worker refused what the run would build or call ("rejected: <why>")."""
    UNVERIFIED = "unverified"
    """Failed: no worker could verify the run's message ("unverified (<label>): <advice>",
    recorded by its producer: protocol/rejection.py)."""
    EXPIRED = "expired"
    """Expired: the run waited in the queue past its expiry and never ran."""
    CANCELLED_BEFORE_START = "cancelled before start"
    """Cancelled while queued (recorded by the producer that cancelled it)."""


_EXACT: Final = frozenset(
    {Reason.TIMEOUT, Reason.INTERRUPTED, Reason.EXPIRED, Reason.CANCELLED_BEFORE_START}
)
_REJECTED: Final = f"{Reason.REJECTED}: "
_UNVERIFIED: Final = f"{Reason.UNVERIFIED} ("


def rejected(detail: str) -> str:
    """The reason of a run the worker refused; `detail` says what was refused."""
    return f"{_REJECTED}{detail}"


def unverified(label: str, advice: str) -> str:
    """The reason of a run no worker could verify, for a notice's `label`."""
    return f"{_UNVERIFIED}{label}): {advice}"


def reason_of(text: str) -> Reason | None:
    """The kind of a recorded reason; None for free text (an error's type name, ...)."""
    if text in _EXACT:
        return Reason(text)
    if text.startswith(_REJECTED):
        return Reason.REJECTED
    if text.startswith(_UNVERIFIED) and ")" in text:
        return Reason.UNVERIFIED
    return None


def detail_of(text: str) -> str:
    """What follows the kind in a `rejected` reason, or the label of an `unverified` one
    (empty for any other reason)."""
    kind = reason_of(text)
    if kind is Reason.REJECTED:
        return text[len(_REJECTED) :]
    if kind is Reason.UNVERIFIED:
        return text[len(_UNVERIFIED) :].split(")", 1)[0]
    return ""
