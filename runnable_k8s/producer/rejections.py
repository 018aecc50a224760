"""The producer's side of rejection notices: believe a notice only after checking it against
the run's own signed message, and record the failure only once nothing could still run it.

protocol/rejection.py says why each check is there. `Watch` makes every decision for the
waiters of either client (which notice matters, when to look again, when to record); the
functions below only do its I/O, once blocking and once with asyncio.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Final

import redis
import redis.asyncio as aredis
from redis.exceptions import ResponseError

from runnable_k8s.errors import MessageRejected
from runnable_k8s.protocol import envelope, rejection, stream, task_message
from runnable_k8s.protocol.messages import Outcome, Protocol, RunStatus
from runnable_k8s.store import keys, notices

GRACE: Final = 1.0
"""Seconds between the two looks that must both find the message gone: longer than the gap
between a worker's BRPOP and kombu recording the message as unacknowledged."""

_FIRST_DELAY: Final = 0.05  # a rejecting worker acknowledges the message right after the notice
_MAX_DELAY: Final = 10.0  # a notice that does not count (yet) is looked at again this often
_MAX_SCAN: Final = 10_000  # longer queues or unacked hashes: look again later
_MAX_NOTICES: Final = 32  # entries `settle` reads from the stream of a queued run
_HELD_FOR: Final = 0.5  # how long `settle` waits for a rejecting worker's acknowledgement


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the producer's own copy of a run's message says, once verified with its key."""

    digest: str
    signature: str
    tag: str


def evidence(protocol: Protocol, run_id: str, copy: Any, body: Any) -> Evidence | None:
    """The evidence of the stored copy of `run_id`'s message (and the body beside it), or
    None if there is none this producer signed."""
    found = task_message.argument_of(copy) if isinstance(copy, bytes) else None
    if found is None:
        return None
    wire = found[0].encode()
    beside = body if envelope.needs_body_beside(wire) and isinstance(body, bytes) else None
    try:
        opened = protocol.signer.open(wire, kind=envelope.RUN, body=beside, check_expiry=False)
    except MessageRejected:
        return None
    if opened.run_id != run_id:
        return None
    signature = wire.split(b"\n", 2)[1].decode("ascii")  # verified: the MAC's hex
    return Evidence(rejection.digest(wire, beside), signature, found[1])


@dataclass(slots=True)
class _Suspect:
    notices: dict[str, str] = field(default_factory=dict)  # digest -> reason label
    due: float = 0.0
    delay: float = _FIRST_DELAY
    gone_at: float | None = None
    last: str = ""


class Watch:
    """The rejection notices seen by one waiter, and what to do about each run."""

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol
        self._suspects: dict[str, _Suspect] = {}
        self._evidence: dict[str, Evidence | None] = {}
        self.failed: set[str] = set()

    def noticed(self, run_id: str, fields: dict[Any, Any]) -> None:
        """A notice entry (its stream fields) in the stream of `run_id`."""
        digest = fields.get(stream.FIELD_DIGEST.encode())
        label = fields.get(stream.FIELD_REASON.encode())
        if not isinstance(digest, bytes) or len(digest) != 64:
            return
        reason = label.decode(errors="replace") if isinstance(label, bytes) else ""
        now = time.monotonic()
        suspect = self._suspects.setdefault(run_id, _Suspect(due=now))
        suspect.notices.setdefault(
            digest.decode(errors="replace"), reason if reason in rejection.REASONS else "malformed"
        )
        if suspect.gone_at is None:  # a new rejection: look soon, however long the backoff
            suspect.due, suspect.delay = min(suspect.due, now), _FIRST_DELAY

    def forget(self, run_id: str) -> None:
        self._suspects.pop(run_id, None)

    def due(self) -> list[str]:
        now = time.monotonic()
        return [run_id for run_id, s in self._suspects.items() if s.due <= now]

    def last(self, run_id: str) -> str:
        suspect = self._suspects.get(run_id)
        return suspect.last if suspect is not None else ""

    def next_due(self) -> float | None:
        return min((s.due for s in self._suspects.values()), default=None)

    def wait_ms(self, block: int) -> int:
        """`block` (ms, as `XREAD` takes it; -1: the caller's deadline passed), shortened to
        the next look at a suspect."""
        soonest = self.next_due()
        if block < 0 or soonest is None:
            return block
        return max(1, min(block, int((soonest - time.monotonic()) * 1000) + 1))

    @staticmethod
    def reads(run_id: str) -> list[str]:
        """The keys whose values `plan` takes (one MGET: all of one run's slot)."""
        return notices.reads(run_id)

    def plan(self, run_id: str, values: list[Any]) -> tuple[list[str], list[Any]] | None:
        """The keys and arguments of the check script for `run_id`, given what `reads` read;
        None when there is nothing to check (the run is forgotten)."""
        raw_status, copy, body = values
        if run_id not in self._evidence:
            self._evidence[run_id] = evidence(self._protocol, run_id, copy, body)
        found = self._evidence[run_id]
        suspect = self._suspects[run_id]
        label = suspect.notices.get(found.digest) if found is not None else None
        status = self._queued(raw_status, run_id)
        if found is None or label is None or status is None:
            # Not this producer's message, or not the bytes it signed, or already claimed:
            # the notice does not concern this run.
            self.forget(run_id)
            return None
        settings = self._protocol.settings
        record = suspect.gone_at is not None and time.monotonic() - suspect.gone_at >= GRACE
        sealed_status = sealed_outcome = b""
        if record:
            why = rejection.reason(label)
            failed = RunStatus(
                run_id,
                "failed",
                status.name,
                0,
                created_at=status.created_at,
                finished_at=time.time(),
                reason=why,
            )
            sealed_status = self._protocol.seal_status(failed)
            sealed_outcome = self._protocol.seal_outcome(
                Outcome(run_id, "failed", reason=why, attempt=0)
            )
        keys_ = notices.check_keys(run_id, settings.queue)
        args: list[Any] = [
            hashlib.sha1(raw_status).hexdigest(),
            run_id,
            found.signature,
            found.tag,
            _MAX_SCAN,
            "1" if record else "",
            sealed_status,
            sealed_outcome,
            int(settings.result_ttl),
        ]
        return keys_, args

    def verdict(self, run_id: str, verdict: Any) -> None:
        """What the check script answered for `run_id`."""
        suspect = self._suspects.get(run_id)
        if suspect is None:
            return
        text = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
        suspect.last = text
        now = time.monotonic()
        if text == "failed":
            self.failed.add(run_id)  # its outcome reaches every waiter through the stream
            self.forget(run_id)
        elif text == "started":
            self.forget(run_id)
        elif text == "gone":
            if suspect.gone_at is None:
                suspect.gone_at = now
            suspect.due = suspect.gone_at + GRACE
        else:
            suspect.gone_at = None
            suspect.due = now + suspect.delay
            suspect.delay = min(suspect.delay * 2, _MAX_DELAY)

    def _queued(self, raw: Any, run_id: str) -> RunStatus | None:
        if not isinstance(raw, bytes):
            return None
        try:
            status = self._protocol.open_status(raw, run_id)
        except MessageRejected:
            return None
        return status if status.state == "queued" else None


def _notices(watch: Watch, run_id: str, entries: Any) -> None:
    for _, fields in entries or []:
        if stream.entry_kind(fields) == stream.EntryKind.NOTICE.wire:
            watch.noticed(run_id, fields)


def _settling(watch: Watch, run_id: str, started: float) -> float | None:
    """How long `settle` should wait before looking again (None: stop looking)."""
    last, soonest = watch.last(run_id), watch.next_due()
    if soonest is None or run_id in watch.failed:
        return None
    if last == "gone" or (last == "held" and time.monotonic() - started < _HELD_FOR):
        return max(0.0, soonest - time.monotonic())
    return None


# -- blocking I/O ---------------------------------------------------------------------------


def check_due(client: redis.Redis, watch: Watch) -> None:
    """Look at every suspect that is due."""
    for run_id in watch.due():
        try:
            planned = watch.plan(run_id, client.mget(watch.reads(run_id)))
            if planned is None:
                continue
            verdict = notices.check(client, *planned)
        except ResponseError:
            verdict = "unknown"
        watch.verdict(run_id, verdict)


def settle(client: redis.Redis, protocol: Protocol, status: RunStatus) -> RunStatus:
    """`status` of a queued run, or its recorded failure if a notice says no worker could
    verify it and the checks agree (waiting at most about `GRACE`)."""
    if status.state != "queued":
        return status
    run_id, watch, started = status.run_id, Watch(protocol), time.monotonic()
    try:
        _notices(watch, run_id, client.xrange(keys.events(run_id), count=_MAX_NOTICES))
    except ResponseError:
        return status
    check_due(client, watch)
    while (wait := _settling(watch, run_id, started)) is not None:
        time.sleep(wait)
        check_due(client, watch)
    if run_id not in watch.failed:
        return status
    raw = client.get(keys.status(run_id))
    return protocol.open_status(raw, run_id) if isinstance(raw, bytes) else status


# -- asyncio I/O ----------------------------------------------------------------------------


async def acheck_due(client: aredis.Redis, watch: Watch) -> None:
    for run_id in watch.due():
        try:
            planned = watch.plan(run_id, await client.mget(watch.reads(run_id)))
            if planned is None:
                continue
            verdict = await notices.acheck(client, *planned)
        except ResponseError:
            verdict = "unknown"
        watch.verdict(run_id, verdict)


async def asettle(client: aredis.Redis, protocol: Protocol, status: RunStatus) -> RunStatus:
    if status.state != "queued":
        return status
    run_id, watch, started = status.run_id, Watch(protocol), time.monotonic()
    try:
        _notices(watch, run_id, await client.xrange(keys.events(run_id), count=_MAX_NOTICES))
    except ResponseError:
        return status
    await acheck_due(client, watch)
    while (wait := _settling(watch, run_id, started)) is not None:
        await asyncio.sleep(wait)
        await acheck_due(client, watch)
    if run_id not in watch.failed:
        return status
    raw = await client.get(keys.status(run_id))
    return protocol.open_status(raw, run_id) if isinstance(raw, bytes) else status
