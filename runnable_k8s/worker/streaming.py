"""Publishing a run's stream: output chunks, and (on request) its models' callback events.

Each entry is signed and appended to the run's Redis Stream as it is produced, so callers
(any number, joining at any time from the stream's start) see tokens while the model writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from langchain_core.messages import BaseMessageChunk, message_chunk_to_message

from runnable_k8s.errors import MessageRejected, RunnableK8sError, SerializationRefused
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


def _as_invoked(total: Any) -> Any:
    # A chat model's `invoke` returns the message its stream's chunks add up to, as a message,
    # not a chunk (LangChain's `generate_from_stream` converts it the same way); so does a
    # parallel step's, for each model inside the dict its chunks merge into.
    if isinstance(total, BaseMessageChunk):
        return message_chunk_to_message(total)
    if isinstance(total, dict):
        return {key: _as_invoked(value) for key, value in total.items()}
    return total


class StreamInterrupted(RunnableK8sError):
    """This run's stream already holds another delivery's entries: the run ends "interrupted"
    after the `entries` the reader has (never the runnable's failure)."""

    def __init__(self, entries: int) -> None:
        super().__init__(f"the stream already holds {entries} entries of an earlier delivery")
        self.entries = entries


# A delivery's first entry: appended only if no earlier delivery of the run has published
# entries ("c" chunks, "e" events; other kinds, such as unsigned rejection notices, do not
# count), else the count of those entries. KEYS: the stream. ARGV: kind, sealed entry, ttl s.
_FIRST: Final = """
local earlier = 0
for _, entry in ipairs(redis.call('xrange', KEYS[1], '-', '+')) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'k' and (fields[i + 1] == 'c' or fields[i + 1] == 'e') then
      earlier = earlier + 1
    end
  end
end
if earlier > 0 then return earlier end
local id = redis.call('xadd', KEYS[1], '*', 'k', ARGV[1], 'm', ARGV[2])
redis.call('expire', KEYS[1], ARGV[3])
return id
"""


# Rounds of "forged entries removed, first entry tried again" before giving up.
_FIRST_TRIES: Final = 3


def _id(raw: Any) -> bytes:
    return raw if isinstance(raw, bytes) else str(raw).encode()


class StreamPublisher:
    def __init__(self, executor: Executor, run_id: str, progress: Progress) -> None:
        self._executor = executor
        self._run_id = run_id
        self._progress = progress
        self._stream = keys.events(run_id)
        self._last: bytes | None = None  # id of the last entry appended

    async def _append(self, kind: str, value: Any) -> None:
        protocol = self._executor.protocol
        seq = self._progress.published
        what = "stream chunk" if kind == "c" else "stream event"
        data = protocol.data.encode_data(value, what=what)
        sealed = protocol.seal_chunk(self._run_id, data, seq=seq, kind=kind)
        tries = 0

        async def append_once() -> bytes:
            nonlocal tries
            tries += 1
            if tries > 1:
                # The try before may have been applied, its reply lost: never append twice.
                found = await self._find(sealed, seq)
                if found is not None:
                    return found
            return await self._add(kind, sealed, seq)

        try:
            # Across a Redis blip the run waits for Redis, as its outcome would.
            self._last = await ride_out(
                append_once,
                within=self._executor.settings.effective_visibility_timeout,
                what="streaming",
                run_id=self._run_id,
            )
        except (*REDIS_ERRORS, StreamInterrupted) as exc:
            self._progress.own_error = exc
            raise
        self._progress.published += 1

    async def _add(self, kind: str, sealed: bytes, seq: int) -> bytes:
        redis = self._executor.redis
        if seq > 0:  # the usual case: one plain XADD
            return _id(await redis.xadd(self._stream, {"k": kind, "m": sealed}))
        ttl = int(self._executor.settings.result_ttl)
        # A script loaded again by redis-py if Redis restarted and forgot it.
        first = redis.register_script(_FIRST)
        for _ in range(_FIRST_TRIES):
            reply = await first(keys=[self._stream], args=[kind, sealed, ttl])
            if not isinstance(reply, int):
                return _id(reply)
            # Redis cannot check signatures: the script counted chunk-like entries, which
            # anyone who can write to Redis can add. Only signed entries of this run are an
            # earlier delivery's (its worker was lost mid-stream: going on, or starting over,
            # would show the reader chunks twice); the rest go, and the first entry is tried
            # again.
            earlier = await self._earlier()
            if earlier:
                raise StreamInterrupted(earlier)
        raise StreamInterrupted(0)

    def _ours(self, fields: Any) -> bool:
        """Whether a stream entry (its fields) is a signed chunk or event of this run."""
        wire = fields.get(b"m") if isinstance(fields, dict) else None
        if not isinstance(wire, bytes):
            return False
        try:
            self._executor.protocol.open_chunk(wire, self._run_id)
        except MessageRejected:
            return False
        return True

    async def _earlier(self) -> int:
        """The signed entries of this run already in its stream; unsigned chunk-like entries
        (forged: no worker writes them) are deleted by this lease holder."""
        redis = self._executor.redis
        genuine, forged = 0, []
        entries: list[Any] = await redis.xrange(self._stream, "-", "+") or []
        for entry, fields in entries:
            if not fields or fields.get(b"k") not in (b"c", b"e"):
                continue  # a rejection notice, or an outcome: not a chunk
            if self._ours(fields):
                genuine += 1
            else:
                forged.append(_id(entry))
        if forged:
            await redis.xdel(self._stream, *forged)
        return genuine

    async def _find(self, sealed: bytes, seq: int) -> bytes | None:
        """The id of the entry holding `sealed`, if the try before appended it: then it is the
        one signed entry ("c" or "e") of this run after the last one this publisher knows it
        appended (only the run's lease holder appends; unsigned entries are anyone's). None
        if there is none; any other finding means another delivery streams here too."""
        start = b"-" if self._last is None else b"(" + self._last
        found = [
            (entry, fields)
            for entry, fields in await self._executor.redis.xrange(self._stream, start, "+") or []
            if fields and fields.get(b"k") in (b"c", b"e") and self._ours(fields)
        ]
        if not found:
            return None
        if len(found) == 1 and found[0][1].get(b"m") == sealed:
            return _id(found[0][0])
        raise StreamInterrupted(seq + len(found))

    async def chunks(self, source: AsyncIterator[Any]) -> Any:
        """Publish each output chunk; return their sum (what `invoke` would have returned)."""
        total = None
        async for chunk in source:
            await self._append("c", chunk)
            total = _add(total, chunk)
        return _as_invoked(total)

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
        return total if ended else _as_invoked(total)

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
