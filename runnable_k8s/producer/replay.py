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

from runnable_k8s.protocol import model_events

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

    async def replay(self, value: Any) -> None:
        event = model_events.from_wire(value)
        if event is None:
            return
        if event.kind.starts:
            await self._start(event)
            return
        run = self._runs.get(event.run_id)
        if run is None:
            return
        if event.kind.streams:
            chunk = event.data.get("chunk")
            if isinstance(chunk, BaseMessageChunk):
                await run.on_llm_new_token(
                    str(chunk.content) if isinstance(chunk.content, str) else "",
                    chunk=ChatGenerationChunk(message=chunk),
                )
            elif isinstance(chunk, str):
                await run.on_llm_new_token(chunk, chunk=GenerationChunk(text=chunk))
        elif event.kind.ends:
            self._runs.pop(event.run_id, None)
            await run.on_llm_end(_result(event.data.get("output")))

    async def _start(self, event: model_events.ModelEvent) -> None:
        manager = self._parent.get_child()
        name = event.name or "remote-model"
        raw_inputs = event.data.get("input")
        inputs: dict[str, Any] = raw_inputs if isinstance(raw_inputs, dict) else {}
        run_id = uuid.uuid4()
        manager.add_tags(list(event.tags), inherit=False)
        manager.add_metadata(dict(event.metadata), inherit=False)
        if event.kind.chat:
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
            self._runs[event.run_id] = started[0]

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
