"""A delivery of a run on a LangGraph thread: renew the thread's hold, run it, hand the thread
to the next waiting run (store/threads.py has the design).

The thread is handed on only after the run's outcome is recorded, and only when the delivery
came to an outcome (not when it raised: then the message is redelivered and the run still
holds its thread). A worker killed between the two leaves the message unacknowledged; its
redelivery finds the run ended and hands the thread on then.

Strategy rollback: the producer leaves a signed rollback request beside its cancellation.
A cancelled run that finds one puts its thread's checkpoints back as they were before it
started (a copy of that checkpoint becomes the newest; no checkpoint before it: the thread is
deleted), so the run that replaces it starts from there.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aredis

from runnable_k8s.errors import MessageRejected
from runnable_k8s.protocol.graph_state import reads_only
from runnable_k8s.protocol.messages import Protocol, RunRequest
from runnable_k8s.settings import Settings
from runnable_k8s.store import threads
from runnable_k8s.worker.outage import ride_out
from runnable_k8s.worker.registry import RunnableSource
from runnable_k8s.worker.task_state import Handled

log = logging.getLogger("runnable_k8s.worker")


class ThreadRuns:
    def __init__(
        self,
        client: aredis.Redis,
        settings: Settings,
        protocol: Protocol,
        runnables: RunnableSource,
    ) -> None:
        self._client = client
        self._settings = settings
        self._protocol = protocol
        self._runnables = runnables
        self._store = threads.WorkerThreads(client, settings)

    async def run(
        self, request: RunRequest, execute: Callable[[RunRequest], Awaitable[Handled]]
    ) -> Handled:
        # A state read (get_state) neither waits for nor holds its thread: see graph_state.
        reads = reads_only(request.graph)
        thread_id = None if reads else threads.thread_of(request.config)
        if thread_id is None:
            return await execute(request)
        run_id = request.run_id
        within = self._settings.effective_visibility_timeout
        other = await ride_out(
            lambda: self._store.hold(run_id, thread_id),
            within=within,
            what="holding",
            run_id=run_id,
        )
        if other:
            # A delivery of a run cancelled while queued (its thread went on), or a hold that
            # lapsed: the claim below tells which; only the first one is expected.
            log.info("run=%s delivered while run=%s holds its thread", run_id, other)
        before = await self._checkpoint_before(request, thread_id)
        handled = await execute(request)
        if handled.outcome == "cancelled" and await self._rollback_requested(run_id):
            await self._roll_back(request, thread_id, before)
        following = await ride_out(
            lambda: self._store.leave(run_id, thread_id, time.time()),
            within=within,
            what="handing on the thread of",
            run_id=run_id,
        )
        if following:
            log.info("thread of run=%s handed to run=%s", run_id, following)
        return handled

    # -- rollback ---------------------------------------------------------------------------

    async def _graph(self, request: RunRequest) -> Any:
        """The run's graph, if it has a checkpointer (else None)."""
        with contextlib.suppress(Exception):  # the run itself reports a load failure
            runnable = await self._runnables.load(request)
            if getattr(runnable, "checkpointer", None) is not None:
                return runnable
        return None

    async def _checkpoint_before(self, request: RunRequest, thread_id: str) -> str | None:
        """The id of the thread's newest checkpoint before this run (None: none, or no
        checkpointer): where a rollback returns to."""
        graph = await self._graph(request)
        if graph is None:
            return None
        with contextlib.suppress(Exception):
            found = await graph.checkpointer.aget_tuple(_thread_config(thread_id))
            if found is not None:
                return str(found.config["configurable"]["checkpoint_id"])
        return None

    async def _rollback_requested(self, run_id: str) -> bool:
        record = await self._client.get(threads.rollback_key(run_id))
        if not isinstance(record, bytes):
            return False
        try:
            self._protocol.open_cancel(record, threads.rollback_token(run_id))
        except MessageRejected as exc:
            log.warning("ignored unverifiable rollback request run=%s reason=%s", run_id, exc)
            return False
        return True

    async def _roll_back(self, request: RunRequest, thread_id: str, before: str | None) -> None:
        graph = await self._graph(request)
        if graph is None:
            return
        try:
            if before is None:
                await graph.checkpointer.adelete_thread(thread_id)
            else:
                config = _thread_config(thread_id)
                config["configurable"]["checkpoint_id"] = before
                await graph.aupdate_state(config, None, as_node="__copy__")
        except Exception as exc:  # the next run goes on from wherever the thread is
            log.warning(
                "rollback of run=%s failed: %s: %s", request.run_id, type(exc).__name__, exc
            )
            return
        log.info("rolled back run=%s to checkpoint=%s", request.run_id, before or "(none)")


def _thread_config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
