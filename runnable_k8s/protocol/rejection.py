"""Rejection notices: what a worker says about a run message it could not verify.

A producer whose signing key differs from its workers' used to wait out its whole wait timeout,
while every rescue sweep pushed the message back and a worker rejected it again, until its copy
expired. Telling the producer is not as simple as it looks, because of who can say what:

- A worker whose key differs cannot sign anything the producer can verify. Whatever it writes
  about a rejection is, to the producer, just bytes that anyone who can write to Redis could
  also have written. So a notice never fails a run on its own.
- The producer knows the exact bytes it signed: it can verify its own copy of the message
  (`keys.message`, and the body beside it) with its own key. A notice names the SHA-256
  (`digest`) of the exact bytes the worker could not verify, under the run id the message
  *claimed*. It counts only when that digest is the digest of the producer's own, verified
  message (a rejected forgery under a legitimate run's id names other bytes), AND the message
  is verifiably gone from every place a worker would still take it: the run was never claimed
  (its status is still the producer's own "queued" record), it is not pending rescue, no item
  of the queue list and no entry of kombu's `unacked` hash carries its signature (searched by
  the signature's hex, which survives kombu re-serializing a message it hands back), and all of
  that held on two looks a second apart, the second atomic with recording the outcome. Only
  then does the producer record the run as failed, signed with its own key, so every waiter
  and `runnable-k8s status` see it.
- Anyone can compute the digest of a queued message, so anyone can forge a matching notice;
  but while the real message is queued, reserved or running, the notice does not count, and a
  worker with the right key runs the run as usual. Someone who can also delete the message and
  its pending entry can make the run fail with this error; they could already hide it (delete
  the message and its copy), and a run is denied either way: signing protects what runs, not
  whether it runs. Protect Redis itself.
- The worker drops the run from the pending set (no rescue, no count toward scaling) only when
  the bytes it rejected are exactly the run's stored copy: a forged message pushed under a
  legitimate run's id changes nothing for the legitimate run, which is still run or rescued.
  The copy itself is kept until the producer records the failure (or it expires): it is the
  one place a producer process that did not send the run (`status`, `RemoteRun.attach`) finds
  the bytes that were signed.

A notice is an entry of the run's event stream with kind `NOTICE` (the one unsigned kind: a
hint to check, never trusted) and fields `d` (digest) and `r` (a reason label).
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal

from runnable_k8s.protocol import reasons, stream
from runnable_k8s.protocol.reasons import Reason

NOTICE: Final = stream.EntryKind.NOTICE.wire
"""The `k` field of a notice entry in a run's event stream."""

Label = Literal["bad_signature", "too_large", "malformed"]
REASONS: Final[tuple[Label, ...]] = ("bad_signature", "too_large", "malformed")
"""Reason labels a notice may carry (the worker's rejected-message metric labels)."""

_DOMAIN: Final = b"runnable-k8s/rejected/v1\n"

_EXPLAIN: Final = {
    "bad_signature": (
        "a worker could not verify this run's signature: the producer's and the worker's "
        "signing keys (RUNNABLE_K8S_SIGNING_KEY) probably differ"
    ),
    "too_large": (
        "a worker refused this run's size: its RUNNABLE_K8S_MAX_BODY_BYTES is probably lower "
        "than the producer's"
    ),
    "malformed": (
        "a worker could not read this run's message: the producer's and the worker's "
        "runnable-k8s versions probably differ"
    ),
}


def digest(wire: bytes, beside: bytes | None) -> str:
    """SHA-256 (hex) of a run message exactly as a worker read it: its task argument and, if
    the message says its body travels beside it, that body (None: none found)."""
    hashed = hashlib.sha256(_DOMAIN)
    hashed.update(len(wire).to_bytes(8, "big"))
    hashed.update(wire)
    if beside is None:
        hashed.update(b"\x00")
    else:
        hashed.update(b"\x01")
        hashed.update(beside)
    return hashed.hexdigest()


def reason(label: str) -> str:
    """The recorded reason of a run a worker could not verify, for the reason `label`."""
    return reasons.unverified(label, _EXPLAIN.get(label, _EXPLAIN["malformed"]))


def label_of(recorded: str) -> Label | None:
    """The reason label of a recorded reason written by `reason`, else None."""
    if reasons.reason_of(recorded) is not Reason.UNVERIFIED:
        return None
    label = reasons.detail_of(recorded)
    return next((known for known in REASONS if known == label), "malformed")
