"""Publishing a run's stream: output chunks, and (on request) its models' callback events.

Each chunk is signed with its position and appended to the run's Redis Stream as it is
produced (several in one entry when the model is faster than Redis: worker/stream_writer.py),
so callers (any number, joining at any time from the stream's start) see tokens while the
model writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.messages import BaseMessageChunk, message_chunk_to_message

from runnable_k8s.protocol import model_events, stream
from runnable_k8s.worker.graphs import GraphStream
from runnable_k8s.worker.stream_writer import Batcher, EntryWriter, Progress, StreamHost


def _add(total: Any, chunk: Any) -> Any:
    # LangChain's streaming contract: chunks add up (str, message chunks, AddableDict). Where
    # one cannot be added to the sum so far, the sum starts again from it: that is what
    # `invoke` of a RunnableLambda over a generator returns for the same chunks.
    if total is None:
        return chunk
    try:
        return total + chunk
    except TypeError:
        return chunk


class _Sum:
    """`_add` over a whole stream, with text kept as parts and joined once: adding strings one
    by one copied the text so far for every chunk (quadratic in the stream's length)."""

    def __init__(self) -> None:
        self._total: Any = None
        self._texts: list[str] = []

    def add(self, chunk: Any) -> None:
        if type(chunk) is str and (self._total is None or type(self._total) is str):
            if self._total is not None:
                self._texts.append(self._total)
                self._total = None
            self._texts.append(chunk)
            return
        if self._texts:
            self._total, self._texts = "".join(self._texts), []
        self._total = _add(self._total, chunk)

    def value(self) -> Any:
        return "".join(self._texts) if self._texts else self._total


def _as_invoked(total: Any) -> Any:
    # A chat model's `invoke` returns the message its stream's chunks add up to, as a message,
    # not a chunk (LangChain's `generate_from_stream` converts it the same way); so does a
    # parallel step's, for each model inside the dict its chunks merge into.
    if isinstance(total, BaseMessageChunk):
        return message_chunk_to_message(total)
    if isinstance(total, dict):
        return {key: _as_invoked(value) for key, value in total.items()}
    return total


class StreamPublisher:
    """Publishes one run's stream: each chunk or event is encoded as it comes and goes out
    through a `Batcher` (worker/stream_writer.py), at once or with the others produced while
    a write was in flight."""

    def __init__(self, executor: StreamHost, run_id: str, progress: Progress) -> None:
        self._executor = executor
        self._progress = progress
        writer = EntryWriter(executor, run_id, progress)
        self._batcher = Batcher(writer, executor.settings.max_body_bytes)

    async def _append(self, kind: stream.ItemKind, value: Any) -> None:
        what = "stream chunk" if kind is stream.ItemKind.CHUNK else "stream event"
        data = self._executor.protocol.data.encode_data(value, what=what)
        await self._batcher.put(kind, data)

    @contextlib.asynccontextmanager
    async def _publishing(self) -> AsyncIterator[None]:
        """Everything queued is published when the runnable ends, even when it raised (the
        reader sees the chunks before the failure, as they were produced); nothing more once a
        write gave up (the worker's error) or the run was cancelled."""
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) or exc is self._progress.own_error:
                await self._batcher.abandon()
                raise
            try:
                await self._batcher.close()
            except BaseException:
                await self._batcher.abandon()
                raise
            raise
        try:
            await self._batcher.close()
        except BaseException:
            await self._batcher.abandon()
            raise

    async def chunks(self, source: AsyncIterator[Any]) -> Any:
        """Publish each output chunk; return their sum (what `invoke` would have returned)."""
        total = _Sum()
        async with self._publishing():
            async for chunk in source:
                await self._append(stream.ItemKind.CHUNK, chunk)
                total.add(chunk)
        return _as_invoked(total.value())

    async def graph(self, source: AsyncIterator[Any], graph: GraphStream) -> Any:
        """Publish what the caller's stream modes yield; return the graph's final state (see
        `graphs`): a graph's chunks do not add up to it."""
        async with self._publishing():
            async for item in source:
                for chunk in graph.take(item):
                    await self._append(stream.ItemKind.CHUNK, chunk)
        return graph.output()

    async def events(self, source: AsyncIterator[Any], *, ended: bool = False) -> Any:
        """From `astream_events(version="v2")`: publish the root's output chunks, and the
        events of every model inside the run. Returns the chunks' sum, or with `ended` (a
        graph, whose chunks do not add up) the output the root's end event reports."""
        total = None
        async with self._publishing():
            async for event in source:
                name = event.get("event", "")
                data = event.get("data", {})
                root = not event.get("parent_ids")
                if root and name.endswith("_stream") and "chunk" in data:
                    await self._append(stream.ItemKind.CHUNK, data["chunk"])
                    if not ended:
                        total = _add(total, data["chunk"])
                elif root and ended and name.endswith("_end") and "output" in data:
                    total = data["output"]
                if model_events.is_model_event(name):
                    codec = self._executor.protocol.data
                    sent = model_events.to_wire(event, codec.encode_data)
                    await self._append(stream.ItemKind.EVENT, sent)
        return total if ended else _as_invoked(total)
