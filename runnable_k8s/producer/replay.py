"""Replay a remote model's callback events as child runs of the caller's RunnableK8s step.

`astream_events` is built from callbacks, which cannot cross processes. The worker sends the
events of models inside the run; here each remote model run becomes a local child run of the
RunnableK8s step, fed with the same start, token and end callbacks, so `astream_events` shows
genuine `on_chat_model_start` / `on_chat_model_stream` / `on_chat_model_end` events.
"""

from __future__ import annotations

import uuid
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForChainRun
from langchain_core.callbacks.manager import AsyncCallbackManagerForLLMRun
from langchain_core.messages import BaseMessage, BaseMessageChunk, message_chunk_to_message
from langchain_core.outputs import (
    ChatGeneration,
    ChatGenerationChunk,
    Generation,
    GenerationChunk,
    LLMResult,
)

try:  # The handler behind astream_events(version="v2"); private, so looked up defensively.
    from langchain_core.tracers.event_stream import _AstreamEventsCallbackHandler
except ImportError:  # pragma: no cover
    _AstreamEventsCallbackHandler = None  # type: ignore[assignment,misc]


def wants_events(run_manager: AsyncCallbackManagerForChainRun) -> bool:
    """Whether the caller is streaming events (only then does the worker send them)."""
    if _AstreamEventsCallbackHandler is None:
        return False
    return any(isinstance(h, _AstreamEventsCallbackHandler) for h in run_manager.handlers)


class EventReplayer:
    def __init__(self, run_manager: AsyncCallbackManagerForChainRun) -> None:
        self._parent = run_manager
        self._runs: dict[str, AsyncCallbackManagerForLLMRun] = {}

    async def replay(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        kind = str(event.get("event", ""))
        remote_id = str(event.get("run_id", ""))
        raw_data = event.get("data")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        if kind in ("on_chat_model_start", "on_llm_start"):
            await self._start(kind, remote_id, event, data)
            return
        run = self._runs.get(remote_id)
        if run is None:
            return
        if kind in ("on_chat_model_stream", "on_llm_stream"):
            chunk = data.get("chunk")
            if isinstance(chunk, BaseMessageChunk):
                await run.on_llm_new_token(
                    str(chunk.content) if isinstance(chunk.content, str) else "",
                    chunk=ChatGenerationChunk(message=chunk),
                )
            elif isinstance(chunk, str):
                await run.on_llm_new_token(chunk, chunk=GenerationChunk(text=chunk))
        elif kind in ("on_chat_model_end", "on_llm_end"):
            self._runs.pop(remote_id, None)
            await run.on_llm_end(_result(data.get("output")))

    async def _start(
        self, kind: str, remote_id: str, event: dict[str, Any], data: dict[str, Any]
    ) -> None:
        manager = self._parent.get_child()
        name = str(event.get("name", "remote-model"))
        tags = [str(t) for t in event.get("tags", []) if isinstance(t, str)]
        raw_metadata = event.get("metadata")
        metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
        raw_inputs = data.get("input")
        inputs: dict[str, Any] = raw_inputs if isinstance(raw_inputs, dict) else {}
        run_id = uuid.uuid4()
        manager.add_tags(tags, inherit=False)
        manager.add_metadata(metadata, inherit=False)
        if kind == "on_chat_model_start":
            messages = inputs.get("messages") or [[]]
            started = await manager.on_chat_model_start(
                {"name": name},
                [list(m) for m in messages if isinstance(m, list)] or [[]],
                run_id=run_id,
                name=name,
            )
        else:
            prompts = [str(p) for p in inputs.get("prompts", [])] or [""]
            started = await manager.on_llm_start({"name": name}, prompts, run_id=run_id, name=name)
        if started:
            self._runs[remote_id] = started[0]

    async def close(self) -> None:
        """End runs whose end event never came (the remote run failed or was cancelled)."""
        for run in self._runs.values():
            await run.on_llm_error(RuntimeError("remote model run ended without a result"))
        self._runs.clear()


def _result(output: Any) -> LLMResult:
    if isinstance(output, BaseMessage):
        message = message_chunk_to_message(output)
        return LLMResult(generations=[[ChatGeneration(message=message)]])
    return LLMResult(generations=[[Generation(text="" if output is None else str(output))]])
