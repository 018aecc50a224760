"""One run at a time per LangGraph thread (`configurable.thread_id`), with LangGraph's
multitask strategies.

A thread is held by a RUN id, never by a worker: the producer's enqueue (one script for any run,
lua/enqueue.lua) either takes the free thread for its run (and queues the message as any run's)
or puts the run in the thread's waiting line, where it is in neither the Celery queue nor the
pending set (so no worker slot, no KEDA count, no rescue). When the holder ends (its outcome
recorded, or cancelled while queued) `leave` hands the thread to the next waiting run by pushing
that run's kept message copy (`rk8s:{run}:message`) onto the queue. A SIGKILLed worker's run is
redelivered still holding its thread, so nothing else of the thread starts meanwhile. A hold
lasts at most `hold_ttl` without renewal (each delivery renews it), so a run lost in some way
nobody records cannot block its thread for ever.

Keys (the thread id is hashed: any string is a valid thread id, and key names stay short):
`rk8s:thread:<queue>:<sha1>` holds the holder's run id, `...:waiting` is the line (a list of
run ids), `rk8s:{run}:thread` links a run to its thread (for a cancel that only has the run
id). None of it is signed: Redis cannot check signatures, the scripts only ever push a run's
own signed message copy (which workers verify), and read names are checked for shape.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import redis
import redis.asyncio as aredis

from runnable_k8s.errors import UnknownMultitaskStrategy
from runnable_k8s.protocol.graph_state import reads_only
from runnable_k8s.protocol.messages import RunRequest
from runnable_k8s.settings import Settings
from runnable_k8s.store import keys, scripts

Strategy = Literal["enqueue", "reject", "interrupt", "rollback"]
STRATEGIES: Final[tuple[Strategy, ...]] = ("enqueue", "reject", "interrupt", "rollback")
DEFAULT: Final[Strategy] = "enqueue"

Verdict = Literal["started", "waiting", "busy"]


def check_strategy(value: object) -> Strategy:
    """`value` as a strategy.

    Raises:
        UnknownMultitaskStrategy: not one of LangGraph's four names.
    """
    if value not in STRATEGIES:
        raise UnknownMultitaskStrategy(
            f"unknown multitask_strategy {value!r:.60}: use one of {', '.join(STRATEGIES)}"
        )
    return value


def thread_of(config: Mapping[str, Any] | None) -> str | None:
    """The `configurable.thread_id` of an exported config (a string: checked on export)."""
    configurable = (config or {}).get("configurable")
    if not isinstance(configurable, Mapping):
        return None
    thread_id = configurable.get("thread_id")
    return thread_id if isinstance(thread_id, str) else None


def turn_of(request: RunRequest) -> str | None:
    """The thread whose turn a run waits for. A state read (get_state) waits for none: it reads
    the thread's last checkpoint while a run goes on, as in-process (see graph_state)."""
    return None if reads_only(request.graph) else thread_of(request.config)


def thread_key(queue: str, thread_id: str) -> str:
    """The key holding the id of the run that holds `thread_id` (on `queue`)."""
    digest = hashlib.sha1(thread_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{keys.PREFIX}:thread:{queue}:{digest}"


def waiting_key(queue: str, thread_id: str) -> str:
    """The thread's line of waiting run ids (first = next)."""
    return f"{thread_key(queue, thread_id)}:waiting"


def link_key(run_id: str) -> str:
    """Which thread key a run belongs to (set while it is queued or waiting)."""
    return f"{keys.PREFIX}:{{{run_id}}}:thread"


def rollback_key(run_id: str) -> str:
    """A signed request (a cancellation record for `rollback_token(run_id)`) that the
    cancelled run's checkpoints be discarded: strategy rollback."""
    return f"{keys.PREFIX}:{{{run_id}}}:rollback"


def rollback_token(run_id: str) -> str:
    """What the rollback record is sealed for: a cancellation record of the run itself,
    copied here, must not pass as one."""
    return f"{run_id}:rollback"


def hold_ttl(settings: Settings) -> int:
    """How long a hold lasts without a delivery renewing it: the run's whole possible life
    (waiting out its expiry, its time limit, a redelivery after the visibility timeout)."""
    return int(
        settings.run_expiry
        + settings.time_limit
        + settings.effective_visibility_timeout
        + settings.lease
        + 60
    )


@dataclass(frozen=True, slots=True)
class Entered:
    """What the enqueue script made of a run on a thread: its verdict and the run holding
    the thread (for 'waiting' and 'busy')."""

    run_id: str
    verdict: Verdict
    holder: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def parse_entered(run_id: str, reply: Any) -> Entered:
    verdict, holder = (_text(v) for v in reply)
    return Entered(run_id, cast(Verdict, verdict), holder)


class TransactionThreads:
    """The thread script queued into a cancel transaction (a producer's, or a worker's answer
    to a Celery revoke). Entering a thread is part of the enqueue script (lua/enqueue.lua)."""

    def __init__(self, client: redis.Redis | aredis.Redis, settings: Settings) -> None:
        self._settings = settings
        self._leave = client.register_script(scripts.source("thread_leave"))

    def queue_leave(self, pipe: Any, run_id: str, *, now: float) -> Any:
        """Queue, inside a cancel's MULTI, taking a run that never started out of its
        thread (or handing the thread on, if it held it). On an asyncio pipeline, await what
        this returns."""
        return self._leave(
            keys=[link_key(run_id), self._settings.queue, keys.pending(self._settings.queue)],
            args=[run_id, repr(now), hold_ttl(self._settings), f"{keys.PREFIX}:", ""],
            client=pipe,
        )


class WorkerThreads:
    """The worker's side: renew a hold on delivery, hand the thread on at the end."""

    def __init__(self, client: aredis.Redis, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._hold = scripts.aload(client, "thread_hold")
        self._leave = scripts.aload(client, "thread_leave")

    async def hold(self, run_id: str, thread_id: str) -> str:
        """Renew (or retake, if it lapsed) this run's hold. Returns '' when the run holds
        its thread, else the id of the run that does."""
        reply = await self._hold(
            keys=[thread_key(self._settings.queue, thread_id)],
            args=[run_id, hold_ttl(self._settings)],
        )
        return _text(reply)

    async def leave(self, run_id: str, thread_id: str, now: float) -> str:
        """The run is over: hand its thread to the next waiting run. Returns that run's id
        ('' = none). Safe to repeat."""
        queue = self._settings.queue
        reply = await self._leave(
            keys=[link_key(run_id), queue, keys.pending(queue)],
            args=[
                run_id,
                repr(now),
                hold_ttl(self._settings),
                f"{keys.PREFIX}:",
                thread_key(queue, thread_id),
            ],
        )
        return _text(reply)


def position(client: redis.Redis, run_id: str) -> int | None:
    """Where a run is on its thread: 0 if it holds it, n >= 1 if it is n-th in line, None if
    it has no thread or is done with it. Read from unsigned records: for display only."""
    thread = _text(client.get(link_key(run_id)))
    if not thread.startswith(f"{keys.PREFIX}:thread:"):
        return None
    if _text(client.get(thread)) == run_id:
        return 0
    found = client.lpos(f"{thread}:waiting", run_id)
    return found + 1 if isinstance(found, int) else None
