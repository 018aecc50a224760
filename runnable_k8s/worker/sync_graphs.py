"""LangGraph graphs compiled with a synchronous checkpointer (`SqliteSaver`, `PostgresSaver`).

The worker runs every graph with `ainvoke`/`astream`, and a saver that only implements the sync
methods fails there ("The SqliteSaver does not support async methods"). Two fixes were possible:

- run the graph's sync `invoke`/`stream` in a thread: then the whole run (its nodes, model calls,
  callbacks) lives in a thread that cannot be stopped from outside. Cancellation and the time
  limit could only act between steps, and every stream path (stream modes, `astream_events`,
  interrupts) would need a second, thread-fed publisher;
- keep the graph on the event loop and give it a saver whose async methods call the sync ones in
  a small thread pool (`ThreadedSaver`). Only the checkpoint calls leave the loop; everything else
  behaves exactly as for an async saver. LangGraph's own sync `PostgresStore` does the same for
  its async methods.

We do the second. What a thread can and cannot do here: when a run is cancelled or reaches its
time limit, the run ends at once (its task is cancelled at its current `await`, as with any
graph); a checkpoint call already running in a pool thread cannot be interrupted and runs to its
end in the background, so a checkpoint being written when the run stopped may still be stored,
whole (an SQL statement is never cut off halfway). Savers that already support async are left
alone. Sync nodes run in the loop's default executor, as LangGraph does under `ainvoke`.

This module imports LangGraph: import it only where a compiled graph may exist.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
)
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.pregel import Pregel

log = logging.getLogger("runnable_k8s.worker")

T = TypeVar("T")

# Threads per wrapped saver. The sync savers serialize calls on one connection behind a lock, so
# more threads only wait; a saver on a connection pool gains up to this many calls at once. The
# pool is bounded so a burst of runs queues its checkpoint calls instead of growing threads.
SAVER_THREADS: Final = 8
# A thread no run can have: the probe's read finds nothing and changes nothing.
_PROBE: Final[RunnableConfig] = {
    "configurable": {"thread_id": "runnable-k8s-probe", "checkpoint_ns": ""}
}


class ThreadedSaver(BaseCheckpointSaver[Any]):
    """A sync saver with async methods that run its sync ones in a bounded thread pool.

    Sync methods pass straight through; so do the saver's serializer, channel versions and
    config specs, so what it stores is exactly what the saver would store on its own. `alist`
    reads the whole listing in one thread before yielding (the sync savers hold their
    connection's lock while a listing is open, which must not stay held across awaits).
    """

    def __init__(self, inner: BaseCheckpointSaver[Any], pool: ThreadPoolExecutor) -> None:
        super().__init__(serde=inner.serde)
        self.serde = inner.serde  # the inner saver's, unchanged (not wrapped again)
        self.inner = inner
        self._pool = pool

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    @property
    def config_specs(self) -> list[Any]:
        return list(self.inner.config_specs)

    def get_next_version(self, current: Any, channel: None) -> Any:
        return self.inner.get_next_version(current, channel)

    def with_allowlist(self, extra_allowlist: Collection[tuple[str, ...]]) -> ThreadedSaver:
        # LangGraph narrows the serializer per graph through this: narrow the inner saver.
        inner = self.inner.with_allowlist(extra_allowlist)
        return self if inner is self.inner else ThreadedSaver(inner, self._pool)

    # -- sync: the saver's own ----------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.inner.get_tuple(config)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        return self.inner.list(config, filter=filter, before=before, limit=limit)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self.inner.put(config, checkpoint, metadata, new_versions)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self.inner.put_writes(config, writes, task_id, task_path)

    def delete_thread(self, thread_id: str) -> None:
        self.inner.delete_thread(thread_id)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self.inner.delete_for_runs(run_ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self.inner.copy_thread(source_thread_id, target_thread_id)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.inner.prune(thread_ids, strategy=strategy)

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return self.inner.get_delta_channel_history(config=config, channels=channels)

    # -- async: the same calls, in the pool -------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._call(self.inner.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        def read() -> list[CheckpointTuple]:
            return [*self.inner.list(config, filter=filter, before=before, limit=limit)]

        for item in await self._call(read):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._call(self.inner.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._call(self.inner.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._call(self.inner.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._call(self.inner.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._call(self.inner.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._call(self.inner.prune, thread_ids, strategy=strategy)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await self._call(
            self.inner.get_delta_channel_history, config=config, channels=channels
        )


async def lacks_async(saver: BaseCheckpointSaver[Any]) -> bool:
    """Whether `saver` has no async methods: its async read raises NotImplementedError (what
    `BaseCheckpointSaver` and `SqliteSaver` do). Any other answer, even an error, means it has
    them (a run then meets that error as it would without us)."""
    try:
        await saver.aget_tuple(_PROBE)
    except NotImplementedError:
        return True
    except Exception:
        return False
    return False


async def with_async_checkpointer(runnable: Runnable[Any, Any], ref: str) -> Runnable[Any, Any]:
    """`runnable` unchanged, or, for a graph compiled with a sync-only checkpointer, a copy of
    the graph whose checkpointer is that saver behind a `ThreadedSaver` (the caller's graph
    object is not modified). Only the top-level graph's own saver is adapted; subgraphs
    compiled without one use it through their parent, as in LangGraph."""
    if not isinstance(runnable, Pregel):
        return runnable
    saver = runnable.checkpointer
    if not isinstance(saver, BaseCheckpointSaver) or isinstance(saver, ThreadedSaver):
        return runnable
    if isinstance(saver, InMemorySaver):
        # It works, but breaks the one-store rule: say so once, when the graph loads.
        log.warning(
            "graph ref=%s keeps its checkpoints in this process's memory (%s): a thread "
            "continues only on this process; give every worker one shared store",
            ref,
            type(saver).__name__,
        )
        return runnable
    if not await lacks_async(saver):
        return runnable
    pool = ThreadPoolExecutor(SAVER_THREADS, thread_name_prefix="rk8s-checkpointer")
    log.info(
        "graph ref=%s: %s has no async methods; its calls run in a pool of %d threads",
        ref,
        type(saver).__name__,
        SAVER_THREADS,
    )
    return runnable.copy({"checkpointer": ThreadedSaver(saver, pool)})
