"""Publishing a run's stream: output chunks, and (on request) its models' callback events.

Each entry is signed and appended to the run's Redis Stream as it is produced, so callers
(any number, joining at any time from the stream's start) see tokens while the model writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from runnable_k8s.errors import SerializationRefused
from runnable_k8s.protocol import keys
from runnable_k8s.protocol.remote_config import json_safe_mapping

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
    """How many entries a run has published (a stream that has begun cannot be retried)."""

    published: int = 0


def _add(total: Any, chunk: Any) -> Any:
    # LangChain's streaming contract: chunks add up (str, message chunks, AddableDict).
    if total is None:
        return chunk
    try:
        return total + chunk
    except TypeError:
        return chunk


class StreamPublisher:
    def __init__(self, executor: Executor, run_id: str, progress: Progress) -> None:
        self._executor = executor
        self._run_id = run_id
        self._progress = progress
        self._stream = keys.events(run_id)

    async def _append(self, kind: str, value: Any) -> None:
        protocol = self._executor.protocol
        what = "stream chunk" if kind == "c" else "stream event"
        data = protocol.data.encode_data(value, what=what)
        sealed = protocol.seal_chunk(self._run_id, data, seq=self._progress.published, kind=kind)
        redis = self._executor.redis
        if self._progress.published == 0:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._stream, {"k": kind, "m": sealed})
                pipe.expire(self._stream, int(self._executor.settings.result_ttl))
                await pipe.execute()
        else:
            await redis.xadd(self._stream, {"k": kind, "m": sealed})
        self._progress.published += 1

    async def chunks(self, source: AsyncIterator[Any]) -> Any:
        """Publish each output chunk; return their sum (what `invoke` would have returned)."""
        total = None
        async for chunk in source:
            await self._append("c", chunk)
            total = _add(total, chunk)
        return total

    async def events(self, source: AsyncIterator[Any]) -> Any:
        """From `astream_events(version="v2")`: publish the root's output chunks, and the
        events of every model inside the run."""
        total = None
        async for event in source:
            name = event.get("event", "")
            data = event.get("data", {})
            if not event.get("parent_ids") and name.endswith("_stream") and "chunk" in data:
                await self._append("c", data["chunk"])
                total = _add(total, data["chunk"])
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
