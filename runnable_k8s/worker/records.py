"""A run's records in Redis, changed only by compare-and-set, in as few round trips as can be.

Every record is signed, so Redis cannot check a state itself; instead each change names the
exact bytes it expects to replace. Two round trips per run, usually:

1. `claim`: take the lease and write "running", unless the status is not the one expected (the
   producer names its "queued" record by digest, so the usual first delivery needs no read),
   a cancellation arrived, or another worker holds the lease (one script); after 'changed',
   `read` (one pipeline) tells what happened, and the claim is tried again;
3. `finish`: release the lease, and append the outcome, write the final status and drop the
   large body, unless the status changed since the run started (one script); a run that
   failed or expired is indexed as a dead letter instead, its request and body kept.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis.asyncio as aredis

from runnable_k8s.errors import MessageRejected
from runnable_k8s.protocol import keys, rejection, stream, task_message
from runnable_k8s.protocol.messages import Outcome, Protocol, RunStatus

Claim = Literal["ok", "locked", "changed", "cancelled"]

# KEYS: status, lock, cancel, pending set, message copy, kept request. ARGV: SHA-1 of the
# expected status ("" = none), new status ("" = leave it), owner, lease ms, ttl s, "1" to
# ignore a cancellation record (one the caller found forged), run id, "1" to keep the
# request (dead letters are on). A claimed run is no longer pending: its message has reached
# a worker, and its copy moves aside, where `finish` keeps it only for a dead letter. The
# lease is taken before 'cancelled' is answered, so the caller may record the cancellation
# as the lease holder (after verifying it: Redis cannot check a signature).
_CLAIM: Final = """
local holder = redis.call('get', KEYS[2])
if holder and holder ~= ARGV[3] then
  -- A genuine lease never outlives one lease period; one with no expiry, or a longer one,
  -- was not written by a worker: take it over.
  local ttl = redis.call('pttl', KEYS[2])
  if ttl >= 0 and ttl <= tonumber(ARGV[4]) then return 'locked' end
end
local current = redis.call('get', KEYS[1])
local digest = ''
if current then digest = redis.sha1hex(current) end
if digest ~= ARGV[1] then return 'changed' end
redis.call('set', KEYS[2], ARGV[3], 'PX', ARGV[4])
redis.call('zrem', KEYS[4], ARGV[7])
if ARGV[8] == '1' and redis.call('exists', KEYS[5]) == 1 then
  redis.call('rename', KEYS[5], KEYS[6])
  redis.call('expire', KEYS[6], ARGV[5])
else
  redis.call('del', KEYS[5])
end
if ARGV[6] == '' and redis.call('exists', KEYS[3]) == 1 then return 'cancelled' end
if ARGV[2] ~= '' then redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[5]) end
return 'ok'
"""

# KEYS: status, events, body, lock, kept request, kept body, dead-letter index. ARGV: SHA-1
# of the expected status ("" = none), new status, ttl s, owner, outcome, dead-letter ttl s
# ("" = not a dead letter), now, run id.
# A small outcome is appended by the script. A large one ("" in ARGV[5]) was appended by the
# XADD just before it in the same transaction, so megabytes never pass through Lua (handing
# 1 MB to a script and on to XADD took about 3 ms more than a plain XADD); when the status
# changed since the run started, the script takes that entry back, and as the transaction is
# atomic no reader ever sees it.
# The lease is released either way: after `finish` this worker is done with the run.
_FINISH: Final = """
if redis.call('get', KEYS[4]) == ARGV[4] then redis.call('del', KEYS[4]) end
local appended = ARGV[5] == ''
-- The XADD failed (a key of another type in the stream's place): record nothing.
if appended and redis.call('type', KEYS[2]).ok ~= 'stream' then return -1 end
local current = redis.call('get', KEYS[1])
local digest = ''
if current then digest = redis.sha1hex(current) end
if digest ~= ARGV[1] then
  if appended then
    local last = redis.call('xrevrange', KEYS[2], '+', '-', 'COUNT', 1)
    if last[1] then redis.call('xdel', KEYS[2], last[1][1]) end
    redis.call('expire', KEYS[2], ARGV[3])
  end
  return 0
end
if not appended then redis.call('xadd', KEYS[2], '*', 'k', 'r', 'm', ARGV[5]) end
if ARGV[6] == '' then
  redis.call('expire', KEYS[2], ARGV[3])
  redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
  redis.call('del', KEYS[3], KEYS[5])
  return 1
end
-- A dead letter: its records live as long as its index entry (or longer), and its request
-- and body stay for `failed retry`. Entries past the period go as the index is written.
local keep = math.max(tonumber(ARGV[3]), tonumber(ARGV[6]))
redis.call('expire', KEYS[2], keep)
redis.call('set', KEYS[1], ARGV[2], 'EX', keep)
if redis.call('exists', KEYS[3]) == 1 then
  redis.call('rename', KEYS[3], KEYS[6])
  redis.call('expire', KEYS[6], ARGV[6])
end
if redis.call('exists', KEYS[5]) == 1 then redis.call('expire', KEYS[5], ARGV[6]) end
-- A key of another type in the index's place must not fail the script half-way.
local kind = redis.call('type', KEYS[7]).ok
if kind == 'none' or kind == 'zset' then
  redis.call('zadd', KEYS[7], ARGV[7], ARGV[8])
  redis.call('zremrangebyscore', KEYS[7], '-inf', tonumber(ARGV[7]) - tonumber(ARGV[6]))
end
return 1
"""

# KEYS: status, events, pending set, message copy. ARGV: digest, reason label, ttl s, SHA-1 of
# the copy the rejected bytes equal ("" = they equal no copy), run id.
# A notice goes only to a run that exists (a status record), into its stream if that is a
# stream, without extending a TTL already set (a forged message must not keep a finished run's
# results alive). The run leaves the pending set only if its copy is still the one whose bytes
# were rejected: rescuing it would only push the same bytes to the same rejection.
# 'x' is rejection.NOTICE.
_NOTE: Final = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
local kind = redis.call('type', KEYS[2]).ok
if kind == 'none' or kind == 'stream' then
  redis.call('xadd', KEYS[2], '*', 'k', 'x', 'd', ARGV[1], 'r', ARGV[2])
  if redis.call('ttl', KEYS[2]) < 0 then redis.call('expire', KEYS[2], ARGV[3]) end
end
if ARGV[4] == '' or redis.call('type', KEYS[4]).ok ~= 'string' then return 0 end
if redis.sha1hex(redis.call('get', KEYS[4])) ~= ARGV[4] then return 0 end
redis.call('zrem', KEYS[3], ARGV[5])
return 1
"""

# Cancelled runs are not dead letters: someone chose to end them.
DEAD_LETTER_STATES: Final = frozenset({"failed", "expired"})

# Outcomes from this size on are appended by a plain XADD beside the script (see above).
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
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._note = client.register_script(_NOTE)
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
    ) -> tuple[Claim, str | None]:
        """Take the lease and record `status` (None: leave the status as it is), if the
        status record's SHA-1 is `expected_digest` ("" = no record). Returns the verdict and,
        when `status` was written, its digest (what `finish` must find in place)."""
        sealed = self._protocol.seal_status(status) if status is not None else b""
        verdict = await self._claim(
            keys=[
                keys.status(run_id),
                keys.lock(run_id),
                keys.cancel(run_id),
                keys.pending(self._queue),
                keys.message(run_id),
                keys.kept_request(run_id),
            ],
            args=[
                expected_digest,
                sealed,
                owner,
                int(lease * 1000),
                self._ttl,
                "1" if ignore_cancel else "",
                run_id,
                "1" if self._dead_ttl > 0 else "",
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
        ]
        if len(sealed) < LARGE_OUTCOME:
            done = await self._finish(keys=keys_, args=[*args, sealed, *after])
            return bool(done == 1)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(keys_[1], stream.signed_fields(stream.EntryKind.OUTCOME, sealed))
            # EVAL, not EVALSHA: a script missing from Redis's cache (after a restart) must
            # not fail inside the transaction after the XADD went through.
            pipe.eval(_FINISH, len(keys_), *keys_, *args, "", *after)
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
