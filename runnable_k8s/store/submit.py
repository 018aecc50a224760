"""The producer's enqueue: a run's "queued" record, its message copy and pending entry, and its
Celery message, written in one step (lua/enqueue.lua). A run on a LangGraph thread goes through
the same script, which also takes its thread or puts it in the thread's line (store/threads.py).

The worker starts the run by compare-and-set against the exact "queued" record, without reading
it first: the request names it by digest. The message copy and the pending entry are what the
rescue sweep needs to push back a message the broker loses (store/rescue.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Sequence
from typing import Any, Final

import redis
import redis.asyncio as aredis

from runnable_k8s.protocol import priority, task_message
from runnable_k8s.protocol.messages import Protocol, RunRequest, RunStatus
from runnable_k8s.store import keys, scripts, threads, webhooks

Record = tuple[str, bytes, int]
"""A key, its signed value and its ttl in seconds."""


def _description(request: RunRequest) -> str:
    # What Flower and `celery inspect` show: never the payload.
    return f"{request.mode} {request.name} run={request.run_id}"[:200]


# The KEYS index of each priority's list in lua/enqueue.lua.
_SLOT: Final = {"normal": 2, "high": 3, "low": 4}


class Submission:
    """The Redis writes of one submission, computed once for either client."""

    def __init__(
        self,
        protocol: Protocol,
        requests: Sequence[RunRequest],
        records: Sequence[Record] = (),
        *,
        strategy: threads.Strategy = threads.DEFAULT,
    ) -> None:
        settings = protocol.settings
        now = time.time()
        ttl = int(settings.result_ttl)
        self.records: list[Record] = list(records)
        # Large bodies go as plain SETs before the script: megabytes do not pass through Lua.
        self.bodies: list[Record] = []
        self.runs: list[tuple[float, str, str, int]] = []  # score, run id, message, list
        self.webhooks: list[tuple[float, str]] = []  # first look, run id
        # Runs that take turns on a thread: (run id, thread id, score, message, list, life).
        self.threaded: list[tuple[str, str, float, str, int, int]] = []
        self.strategy = strategy
        self.settings = settings
        for original in requests:
            queued = protocol.seal_status(
                RunStatus(original.run_id, "queued", original.name, 0, created_at=now)
            )
            request = dataclasses.replace(
                original, queued_digest=hashlib.sha1(queued).hexdigest(), created_at=now
            )
            wire, beside = protocol.seal_request(request)
            self.records.append((keys.status(request.run_id), queued, ttl))
            life = max(1, int(request.expires_at - now) + int(settings.time_limit) + 60)
            if beside is not None:
                self.bodies.append((keys.body(request.run_id), beside, life))
            level = priority.check(request.priority)
            message = task_message.build(
                wire.decode(),
                run_id=request.run_id,
                queue=priority.list_name(settings.queue, level),
                description=_description(request),
            )
            # The copy is dropped when the run ends, so a long life costs only runs that never
            # end: as long as the run may wait, then as long as results are kept. A claim does
            # not touch it, and a dead letter's request is there when its run ends (within
            # `result_ttl` of its latest start, as when claims moved it aside with that TTL).
            kept = max(1, int(request.expires_at - now) + ttl)
            self.records.append((keys.message(request.run_id), message.encode(), kept))
            thread_id = threads.turn_of(request)
            if thread_id is None:
                self.runs.append((now, request.run_id, message, _SLOT[level]))
            else:
                self.threaded.append(
                    (request.run_id, thread_id, now, message, _SLOT[level], max(life, kept))
                )
            if request.webhook is not None:
                record, look = webhooks.plan(protocol.signer, request.run_id, request.webhook, now)
                self.records.append((keys.webhook(request.run_id), record, ttl))
                self.webhooks.append((look, request.run_id))
        self.queue = settings.queue
        # A key the script sets, and its run: whether the write survived a failover
        # (producer/durable.py). The script is atomic: all of it survived, or none.
        first = requests[0].run_id
        self.probe = (keys.status(first), first)

    def script_call(self) -> tuple[list[str], list[Any]]:
        lists = priority.lists(self.queue)
        keys_ = [
            keys.pending(self.queue),
            lists["normal"],
            lists["high"],
            lists["low"],
            keys.webhooks(self.queue),
            *(key for key, _, _ in self.records),
        ]
        args: list[Any] = [
            len(self.records),
            len(self.runs),
            len(self.webhooks),
            len(self.threaded),
            self.strategy,
        ]
        for _, value, ttl in self.records:
            args += [value, ttl]
        for score, run_id, message, slot in self.runs:
            args += [repr(score), run_id, message, slot]
        for look, run_id in self.webhooks:
            args += [repr(look), run_id]
        hold = threads.hold_ttl(self.settings)
        line = hold + int(self.settings.result_ttl)
        for run_id, thread_id, score, message, slot, life in self.threaded:
            thread = threads.thread_key(self.queue, thread_id)
            keys_ += [
                thread,
                threads.waiting_key(self.queue, thread_id),
                threads.link_key(run_id),
                keys.status(run_id),
                keys.message(run_id),
                keys.body(run_id),
            ]
            args += [run_id, repr(score), message, slot, hold, max(life, hold), thread, line]
        return keys_, args

    def entered(self, reply: Any) -> list[threads.Entered]:
        """What the script made of each thread run (`reply` is its answer), in order."""
        if not self.threaded or not isinstance(reply, list):
            return []
        return [
            threads.parse_entered(run[0], pair)
            for run, pair in zip(self.threaded, reply, strict=True)
        ]


class Enqueuer:
    """Writes submissions on a synchronous client (raises redis-py's errors; the caller
    translates them). The script is registered once per client."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._script = scripts.load(client, "enqueue")

    def __call__(self, submission: Submission) -> Any:
        """Returns the script's reply (`Submission.entered` reads it)."""
        for key, value, ttl in submission.bodies:
            self._client.set(key, value, ex=ttl)
        keys_, args = submission.script_call()
        return self._script(keys=keys_, args=args)


class AsyncEnqueuer:
    """`Enqueuer` on an asyncio client."""

    def __init__(self, client: aredis.Redis) -> None:
        self._client = client
        self._script = scripts.aload(client, "enqueue")

    async def __call__(self, submission: Submission) -> Any:
        for key, value, ttl in submission.bodies:
            await self._client.set(key, value, ex=ttl)
        keys_, args = submission.script_call()
        return await self._script(keys=keys_, args=args)


def enqueue(client: redis.Redis, submission: Submission) -> None:
    """One submission through a new `Enqueuer` (for callers without a long-lived one)."""
    Enqueuer(client)(submission)


async def aenqueue(client: aredis.Redis, submission: Submission) -> None:
    await AsyncEnqueuer(client)(submission)
