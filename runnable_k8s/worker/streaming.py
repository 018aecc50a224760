"""Publishing a run's stream: output chunks, and (on request) its models' callback events.

Each entry is signed and appended to the run's Redis Stream as it is produced, so callers
(any number, joining at any time from the stream's start) see tokens while the model writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import ResponseError

from runnable_k8s.errors import RunnableK8sError, SerializationRefused
from runnable_k8s.protocol import keys
from runnable_k8s.protocol.remote_config import json_safe_mapping
from runnable_k8s.worker.graphs import GraphStream
from runnable_k8s.worker.outage import REDIS_ERRORS, ride_out

if TYPE_CHECKING:
    from runnable_k8s.worker.execution import Executor

# Callback events of models that cross the boundary (see README, "Streaming events").
MODEL_EVENTS: Final = frozenset(
    {
        "on_chat_model_start",
        "on_chat_model_stream",
        "on_chat_model_end",
        "on_llm_start",
        "on_llm_stream",
        "on_llm_end",
    }
)
_EVENT_DATA_KEYS: Final = ("input", "chunk", "output")


@dataclass
class Progress:
    """How many entries a run has published (a stream that has begun cannot be retried), and
    the error that made publishing give up, if any: that one is the worker's, never the
    runnable's (a runnable that raises a Redis error of its own fails its run)."""

    published: int = 0
    own_error: BaseException | None = None


def entry_id(seq: int) -> str:
    """The stream entry id of the entry signed with position `seq`.

    Explicit ids make appending idempotent: after an XADD whose reply was lost (Redis went
    away), the retry names the same id, Redis refuses it if the first one was applied, and the
    entry found under that id tells whether it is ours. Ids `0-1`, `0-2`, ... sort before every
    id Redis generates (`<ms>-<n>`), so the outcome, appended with `*`, always comes last.
    """
    return f"0-{seq + 1}"


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


class StreamInterrupted(RunnableK8sError):
    """This run's stream already holds another delivery's entries: the run ends "interrupted"
    after the `entries` the reader has (never the runnable's failure)."""

    def __init__(self, entries: int) -> None:
        super().__init__(f"the stream already holds {entries} entries of an earlier delivery")
        self.entries = entries


# The largest id `entry_id` can give: chunk entries are the ones up to it.
_LAST_ENTRY: Final = "0-18446744073709551615"


def _position(raw: Any) -> int:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return int(text.split("-", 1)[1])


class StreamPublisher:
    def __init__(self, executor: Executor, run_id: str, progress: Progress) -> None:
        self._executor = executor
        self._run_id = run_id
        self._progress = progress
        self._stream = keys.events(run_id)

    async def _append(self, kind: str, value: Any) -> None:
        protocol = self._executor.protocol
        seq = self._progress.published
        data = protocol.data.encode_data(value, what=kind)
        sealed = protocol.seal_chunk(self._run_id, data, seq=seq, kind=kind)
        try:
            # Across a Redis blip the run waits for Redis, as its outcome would; the same
            # sealed bytes are offered again under the same id (see `entry_id`).
            await ride_out(
                lambda: self._xadd(entry_id(seq), kind, sealed),
                within=self._executor.settings.effective_visibility_timeout,
                what="streaming",
                run_id=self._run_id,
            )
        except (*REDIS_ERRORS, StreamInterrupted) as exc:
            self._progress.own_error = exc
            raise
        self._progress.published += 1

    async def _xadd(self, entry: str, kind: str, sealed: bytes) -> None:
        redis = self._executor.redis
        try:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._stream, {"k": kind, "m": sealed}, id=entry)
                if entry == entry_id(0):
                    pipe.expire(self._stream, int(self._executor.settings.result_ttl))
                await pipe.execute()
        except ResponseError:
            # Refused: an entry with this id (or a later one) is there. Ours if an earlier try
            # was applied and only its reply was lost.
            found = await redis.xrange(self._stream, entry, entry)
            fields = found[0][1] if found else None
            if fields and fields.get(b"m") == sealed:
                return
            if await redis.type(self._stream) != b"stream":
                raise  # a key of another type in the stream's place
            # Another delivery of this run streamed here (its worker was lost mid-stream):
            # going on, or starting over, would show the reader chunks twice.
            last = await redis.xrevrange(self._stream, _LAST_ENTRY, "-", count=1)
            raise StreamInterrupted(_position(last[0][0]) if last else 0) from None

    async def chunks(self, source: AsyncIterator[Any]) -> Any:
        """Publish each output chunk; return their sum (what `invoke` would have returned)."""
        total = None
        async for chunk in source:
            await self._append("c", chunk)
            total = _add(total, chunk)
        return total

    async def graph(self, source: AsyncIterator[Any], graph: GraphStream) -> Any:
        """Publish what the caller's stream modes yield; return the graph's final state (see
        `graphs`): a graph's chunks do not add up to it."""
        async for item in source:
            for chunk in graph.take(item):
                await self._append("c", chunk)
        return graph.output()

    async def events(self, source: AsyncIterator[Any], *, ended: bool = False) -> Any:
        """From `astream_events(version="v2")`: publish the root's output chunks, and the
        events of every model inside the run. Returns the chunks' sum, or with `ended` (a
        graph, whose chunks do not add up) the output the root's end event reports."""
        total = None
        async for event in source:
            name = event.get("event", "")
            data = event.get("data", {})
            root = not event.get("parent_ids")
            if root and name.endswith("_stream") and "chunk" in data:
                await self._append("c", data["chunk"])
                if not ended:
                    total = _add(total, data["chunk"])
            elif root and ended and name.endswith("_end") and "output" in data:
                total = data["output"]
            if name in MODEL_EVENTS:
                await self._append("e", self._event(event))
        return total

    def _event(self, event: Any) -> dict[str, Any]:
        data: dict[str, Any] = {}
        codec = self._executor.protocol.data
        for key in _EVENT_DATA_KEYS:
            if key in event.get("data", {}):
                value = event["data"][key]
                try:
                    codec.encode_data(value)
                except SerializationRefused:
                    continue
                data[key] = value
        return {
            "event": event.get("event"),
            "run_id": str(event.get("run_id", "")),
            "name": str(event.get("name", "")),
            "tags": [str(t) for t in event.get("tags", [])],
            "metadata": json_safe_mapping(event.get("metadata", {})),
            "data": data,
        }
