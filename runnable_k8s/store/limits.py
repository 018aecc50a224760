"""Flow-control state in Redis: rate windows, token budgets, concurrency leases and pauses.

Every key lives under one hash tag (`rk8s:{limits}:...`), so a call's share of several limits
(its model, its provider, its tenant) is taken by one script, atomically, all or nothing: a
call never holds one slot while it waits for another. The scripts read the time from Redis
(`TIME`), so every worker measures windows on one clock.

Nothing here is signed: these are counters, and a hostile writer can at worst make workers
wait (bounded by the run's time limit) or go faster than the limit; no payload is read back.
The per-run wait record the worker shows in status is signed by the caller.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import redis
import redis.asyncio as aredis

from runnable_k8s.errors import MessageRejected
from runnable_k8s.limits import Limit
from runnable_k8s.protocol import envelope as env
from runnable_k8s.store import keys, scripts

WAITING: Final = keys.LIMIT_WAITING
"""Sorted set of model calls waiting on a limit now (see `keys.LIMIT_WAITING`)."""
# Key names live in store/keys.py; these names stay for callers of this module.
limit_key = keys.limit
wait_record = keys.wait_record


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer of one attempt to take a call's share."""

    wait: float
    """Seconds to sleep before trying again; 0 means granted."""
    reason: str = ""
    """`requests`, `tokens`, `concurrency` or `paused`."""
    key: str = ""
    """The concrete key that made the call wait."""


class LimitStore:
    """The flow-control scripts on one asyncio client."""

    def __init__(self, client: aredis.Redis, *, lease: float, margin: float, poll: float) -> None:
        self._redis = client
        self._lease_ms = max(1, int(lease * 1000))
        self._margin_ms = int(margin * 1000)
        self._poll_ms = max(1, int(poll * 1000))
        self._acquire = scripts.aload(client, "limit_acquire")
        self._release = scripts.aload(client, "limit_release")
        self._renew = scripts.aload(client, "limit_renew")
        self._pause = scripts.aload(client, "limit_pause")

    async def acquire(
        self, call_id: str, rules: list[tuple[str, Limit]], *, size: int = 0
    ) -> Verdict:
        """Take `call_id`'s share of each (concrete key, limit), or say how long to wait.
        `size` (input characters, 0: unknown) scales the call's token estimate."""
        keys: list[str] = []
        args: list[str | int] = [call_id, self._lease_ms, self._margin_ms, len(rules)]
        args += [self._poll_ms, max(0, size)]
        for key, limit in rules:
            keys += [limit_key(key, p) for p in ("req", "tok", "tokn", "conc", "pause")]
            requests, tokens = limit.requests, limit.tokens
            args += [
                requests.amount if requests else 0,
                int(requests.period * 1000) if requests else 0,
                tokens.amount if tokens else 0,
                int(tokens.period * 1000) if tokens else 0,
                limit.concurrency,
            ]
        keys.append(WAITING)
        answer = await self._acquire(keys=keys, args=args)
        if int(answer[0]) == 0:
            return Verdict(0.0)
        reason = answer[1].decode() if isinstance(answer[1], bytes) else str(answer[1])
        return Verdict(int(answer[0]) / 1000, reason, rules[int(answer[2]) - 1][0])

    async def release(
        self, call_id: str, keys: list[str], tokens: int | None, *, size: int = 0
    ) -> None:
        """Free the call's concurrency slots and settle its token count (None: unknown)."""
        names = [limit_key(k, p) for k in keys for p in ("req", "tok", "tokn", "conc")]
        used = -1 if tokens is None else max(0, tokens)
        await self._release(keys=names, args=[call_id, used, len(keys), max(0, size)])

    async def renew(self, held: list[tuple[str, str]]) -> None:
        """Extend the leases of (call id, key) slots this worker still holds."""
        if held:
            await self._renew(
                keys=[limit_key(key, "conc") for _, key in held],
                args=[self._lease_ms, *(call_id for call_id, _ in held)],
            )

    async def pause(self, key: str, seconds: float) -> None:
        """Pause `key` for every worker (a longer pause already set is kept)."""
        await self._pause(keys=[limit_key(key, "pause")], args=[max(1, int(seconds * 1000))])

    async def waiting(self) -> int:
        """Model calls waiting on a limit across the cluster (lapsed entries included until
        the next acquire trims them)."""
        return int(await self._redis.zcard(WAITING))

    async def holders(self, key: str) -> int:
        """Concurrency slots of `key` taken now (for tests and `status`)."""
        return int(await self._redis.zcard(limit_key(key, "conc")))


def read_wait(client: redis.Redis, signer: env.Signer, run_id: str) -> dict[str, Any] | None:
    """What a running run waits on now (`key`, `reason`, `since`, `until`), or None. A record
    that fails verification is ignored: anyone who can write to Redis could have put it."""
    wire = client.get(wait_record(run_id))
    if not isinstance(wire, bytes):
        return None
    try:
        found = signer.open(wire, kind=env.WAITING)
        fields = json.loads(found.body)
    except (MessageRejected, ValueError):
        return None
    if found.run_id != run_id or not isinstance(fields, dict):
        return None
    return fields
