"""The worker's side of a run's records, changed only by compare-and-set, in as few round
trips and Redis commands as can be.

Every record is signed, so Redis cannot check a state itself; instead each change names the
exact bytes it expects to replace. Two round trips per run, usually:

1. `claim` (lua/claim.lua): take the lease and write "running", unless the status is not the
   one expected (the producer names its "queued" record by digest, so the usual first delivery
   needs no read), a cancellation arrived, or another worker holds the lease; after 'changed',
   `read` (one pipeline) tells what happened, and the claim is tried again;
2. `finish` (lua/finish.lua): append the outcome, write the final status, release the lease
   and drop the large body and the message copy, unless the status changed since the run
   started (the write itself answers what it replaced: SET ... GET, no read first); a run
   that failed or expired is indexed as a dead letter instead, its request and body kept.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis.asyncio as aredis

from runnable_k8s.errors import MessageRejected
from runnable_k8s.protocol import rejection, stream, task_message
from runnable_k8s.protocol.messages import Outcome, Protocol, RunStatus
from runnable_k8s.store import keys, scripts
from runnable_k8s.store.dead_letters import DEAD_LETTER_STATES

Claim = Literal["ok", "locked", "changed", "cancelled"]

# Outcomes from this size on are appended by a plain XADD beside the script (see lua/finish.lua).
LARGE_OUTCOME: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What `read` saw: the verified status (None if absent or unverifiable), its exact
    bytes (for compare-and-set), and whether a verified cancellation is pending."""

    status: RunStatus | None
    raw: bytes
    cancel_requested: bool

    @property
    def digest(self) -> str:
        return digest(self.raw) if self.raw else ""


def digest(record: bytes) -> str:
    """What compare-and-set compares (the scripts hash the record in place the same way)."""
    return hashlib.sha1(record).hexdigest()


class RunRecords:
    def __init__(
        self,
        client: aredis.Redis,
        protocol: Protocol,
        *,
        ttl: int,
        queue: str,
        on_forged: Any = None,
        dead_letter_ttl: int = 0,
    ) -> None:
        self._client = client
        self._protocol = protocol
        self._ttl = ttl
        self._dead_ttl = dead_letter_ttl
        self._queue = queue
        self._claim = scripts.aload(client, "claim")
        self._finish = scripts.aload(client, "finish")
        self._note = scripts.aload(client, "note")
        self._on_forged = on_forged

    async def read(self, run_id: str) -> Snapshot:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.get(keys.status(run_id))
            pipe.get(keys.cancel(run_id))
            raw_status, raw_cancel = await pipe.execute()
        status = self.verify_status(raw_status, run_id)
        cancel = False
        if isinstance(raw_cancel, bytes):
            try:
                self._protocol.open_cancel(raw_cancel, run_id)
                cancel = True
            except MessageRejected as exc:
                self._forged("cancellation", run_id, exc)
        # The digest is of whatever is there, verified or not: a claim may then replace an
        # unverifiable (forged or corrupted) record instead of failing against it forever.
        raw = raw_status if isinstance(raw_status, bytes) else b""
        return Snapshot(status, raw, cancel)

    def verify_status(self, raw: Any, run_id: str) -> RunStatus | None:
        if not isinstance(raw, bytes):
            return None
        try:
            return self._protocol.open_status(raw, run_id)
        except MessageRejected as exc:
            self._forged("status record", run_id, exc)
            return None

    def _forged(self, what: str, run_id: str, exc: Exception) -> None:
        if self._on_forged is not None:
            self._on_forged(what, run_id, exc)

    async def claim(
        self,
        run_id: str,
        expected_digest: str,
        status: RunStatus | None,
        *,
        owner: str,
        lease: float,
        ignore_cancel: bool = False,
        queued: bool = False,
    ) -> tuple[Claim, str | None]:
        """Take the lease and record `status` (None: leave the status as it is), if the
        status record's SHA-1 is `expected_digest` ("" = no record). `ignore_cancel` skips the
        cancellation check (for a record the caller found forged). `queued` says the expected
        record is the producer's own "queued" one (the request names it): then the claim
        needs no read while the run is pending, and no cancellation check, since a genuine
        cancellation always replaces that record (lua/claim.lua). Returns the verdict and,
        when `status` was written, its digest (what `finish` must find in place)."""
        sealed = self._protocol.seal_status(status) if status is not None else b""
        verdict = await self._claim(
            keys=[
                keys.status(run_id),
                keys.lock(run_id),
                keys.cancel(run_id),
                keys.pending(self._queue),
            ],
            args=[
                expected_digest,
                sealed,
                owner,
                int(lease * 1000),
                self._ttl,
                "1" if ignore_cancel or queued else "",
                run_id,
                "1" if queued else "",
            ],
        )
        text = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
        written = digest(sealed) if text == "ok" and status is not None else None
        return text, written  # type: ignore[return-value]

    async def write_status(self, status: RunStatus) -> str:
        """Blind write, for the lease holder (retry progress). Returns the written record's
        digest."""
        sealed = self._protocol.seal_status(status)
        await self._client.set(keys.status(status.run_id), sealed, ex=self._ttl)
        return digest(sealed)

    async def finish(
        self, expected_digest: str, status: RunStatus, outcome: Outcome, *, owner: str
    ) -> bool:
        """Record the outcome unless the status record's SHA-1 is no longer
        `expected_digest`; a failed or expired run also goes into the dead-letter index."""
        run_id = status.run_id
        sealed = self._protocol.seal_outcome(outcome)
        keys_ = [
            keys.status(run_id),
            keys.events(run_id),
            keys.body(run_id),
            keys.lock(run_id),
            keys.message(run_id),
            keys.kept_request(run_id),
            keys.kept_body(run_id),
            keys.dead_letters(self._queue),
        ]
        args: list[str | bytes | int] = [
            expected_digest,
            self._protocol.seal_status(status),
            self._ttl,
            owner,
        ]
        dead = self._dead_ttl > 0 and status.state in DEAD_LETTER_STATES
        after: list[str | bytes | int] = [
            self._dead_ttl if dead else "",
            repr(time.time()),
            run_id,
            max(self._ttl, self._dead_ttl),
        ]
        if len(sealed) < LARGE_OUTCOME:
            done = await self._finish(keys=keys_, args=[*args, sealed, *after])
            return bool(done == 1)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(keys_[1], stream.signed_fields(stream.EntryKind.OUTCOME, sealed))
            # EVAL, not EVALSHA: a script missing from Redis's cache (after a restart) must
            # not fail inside the transaction after the XADD went through.
            pipe.eval(scripts.source("finish"), len(keys_), *keys_, *args, "", *after)
            _, done = await pipe.execute()
        return bool(done == 1)

    async def note_rejection(
        self, run_id: str, wire: bytes, beside: bytes | None, reason: str
    ) -> bool:
        """Leave a notice that the message `wire` (with `beside`, the body beside it, if it
        has one) claiming `run_id` could not be verified, for its producer to check (see
        protocol/rejection.py); and if those are the exact bytes of the run's stored copy,
        take the run off the pending set. Returns whether it was taken off."""
        stored = await self._client.get(keys.message(run_id))
        copy = ""
        if isinstance(stored, bytes):
            found = task_message.argument_of(stored)
            if found is not None and found[0].encode() == wire:
                copy = digest(stored)
        dropped = await self._note(
            keys=[
                keys.status(run_id),
                keys.events(run_id),
                keys.pending(self._queue),
                keys.message(run_id),
            ],
            args=[rejection.digest(wire, beside), reason, self._ttl, copy, run_id],
        )
        return bool(dropped == 1)
