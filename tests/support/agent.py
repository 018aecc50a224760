"""A LangChain 1.x agent (`create_agent`) with human approval of its tool calls
(`HumanInTheLoopMiddleware`), as a user's worker image would hold it: a fake tool-calling chat
model, one tool that needs approval, and `SqliteSaver` on a file every worker here shares.
Workers import this module because the tests that use it allow `tests.support.agent:` in
RUNNABLE_K8S_ALLOWED_REFS; the tests build the same agent in-process to compare with."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

Agent = CompiledStateGraph[Any, Any, Any, Any]


class ScriptedToolModel(GenericFakeChatModel):
    """GenericFakeChatModel whose reply follows the conversation instead of a fixed list, so
    every worker process (and this one) answers the same thread the same way: to a person it
    replies with a `send_email` tool call, but to a question (ending in "?") with text that
    counts the thread's questions so far; to a tool's result, with text (streamed word by word,
    as GenericFakeChatModel streams). A question that starts "Slowly" takes a second to
    answer, so that a run arriving meanwhile on its thread would overlap it."""

    messages: Iterator[AIMessage | str] = iter(())

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedToolModel:  # type: ignore[override]
        return self  # the script knows its one tool

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            reply = AIMessage(f"Done. The tool said: {last.content}", id=f"reply-{len(messages)}")
        elif str(last.content).endswith("?"):
            if str(last.content).startswith("Slowly"):
                time.sleep(1.0)
            asked = sum(isinstance(m, HumanMessage) for m in messages)
            reply = AIMessage(f"Answer {asked}: {last.content}", id=f"reply-{len(messages)}")
        else:
            call = {
                "name": "send_email",
                "args": {"to": "ash@example.com", "body": str(last.content)},
                "id": f"call-{len(messages)}",
            }
            reply = AIMessage("", tool_calls=[call], id=f"reply-{len(messages)}")
        return ChatResult(generations=[ChatGeneration(message=reply)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._generate(messages).generations[0].message
        if not isinstance(reply, AIMessage) or not reply.tool_calls:
            yield from super()._stream(messages, stop, run_manager, **kwargs)
            return
        # GenericFakeChatModel streams no tool calls: one chunk carries them.
        chunks = [
            {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
            for i, c in enumerate(reply.tool_calls)
        ]
        message = AIMessageChunk(
            content="", id=reply.id, tool_call_chunks=chunks, chunk_position="last"
        )
        yield ChatGenerationChunk(message=message)


@tool
def send_email(to: str, body: str) -> str:
    """Send an email."""
    return f"sent to {to}: {body}"


def build_agent(saver: BaseCheckpointSaver[Any]) -> Agent:
    approval = HumanInTheLoopMiddleware(
        interrupt_on={"send_email": {"allowed_decisions": ["approve", "edit", "reject"]}}
    )
    return create_agent(
        ScriptedToolModel(),
        [send_email],
        system_prompt="You send emails for the user.",
        middleware=[approval],
        checkpointer=saver,
    )


def assistant() -> Agent:
    """The factory workers call (once per process)."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    # check_same_thread=False: the saver locks its connection itself (LangGraph's advice).
    saver = SqliteSaver(sqlite3.connect(os.environ["RK8S_TEST_SQLITE_DB"], check_same_thread=False))
    saver.setup()
    return build_agent(saver)
