"""Serializable runnables the benchmark sends to workers (and that the plain Celery baseline
builds inside its worker). Both sides run exactly these classes.

They must be our own `Serializable` classes: LangChain's fake models do not serialize. The
RunnableK8s worker is told to accept them through `RUNNABLE_K8S_ALLOWED_CLASSES`
(`ALLOWED_CLASSES` below), as a user would add their own.

The models implement the async path natively (`_agenerate`, `ainvoke`), as real LLM clients
do; otherwise LangChain would hop to a thread pool on every async call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable

NAMESPACE = ["benchmarks", "models"]
SYSTEM_PROMPT = "You are a Pokemon expert. Answer in one sentence."


class _Serializable:
    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return NAMESPACE


class EchoChatModel(_Serializable, BaseChatModel):
    """Answers at once with `echo: <last message>`; `delay` seconds of waiting first (awaited
    on the async path as an LLM call would be, slept on the sync path)."""

    delay: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "benchmark-echo"

    def _result(self, messages: list[BaseMessage]) -> ChatResult:
        text = f"echo: {messages[-1].content}"
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        if self.delay:
            time.sleep(self.delay)
        return self._result(messages)

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        return self._result(messages)


class TokenStreamModel(_Serializable, BaseChatModel):
    """Streams `tokens` tokens (`"t0 "`, `"t1 "`, ...), `delay` seconds apart; with no delay it
    yields as fast as it can, never waiting, as a model whose tokens are all buffered would.
    `invoke` returns the tokens joined (what the stream adds up to)."""

    tokens: int = 2000
    delay: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "benchmark-tokens"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        text = streamed_text(self.tokens)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Iterator[ChatGenerationChunk]:
        for index in range(self.tokens):
            if self.delay:
                time.sleep(self.delay)
            yield ChatGenerationChunk(message=AIMessageChunk(content=f"t{index} "))

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        for index in range(self.tokens):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield ChatGenerationChunk(message=AIMessageChunk(content=f"t{index} "))


class EchoRunnable(_Serializable, RunnableSerializable[Any, Any]):
    """Returns its input unchanged (W4: the output is as big as the input)."""

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kw: Any) -> Any:
        return input

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kw: Any) -> Any:
        return input


def small_chain(delay: float = 0.0) -> Runnable[dict[str, str], str]:
    """prompt | serializable model | parser: the chain of W1, W2 and (with a delay) W3."""
    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM_PROMPT), ("human", "{input}")])
    return prompt | EchoChatModel(delay=delay) | StrOutputParser()


def token_chain(tokens: int, delay: float = 0.0) -> Runnable[dict[str, str], str]:
    """prompt | token-streaming model | parser: the chain of the streaming workloads."""
    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM_PROMPT), ("human", "{input}")])
    return prompt | TokenStreamModel(tokens=tokens, delay=delay) | StrOutputParser()


def streamed_text(tokens: int) -> str:
    """What `token_chain(tokens)` streams, joined (and what its `invoke` returns)."""
    return "".join(f"t{index} " for index in range(tokens))


def expected(question: str) -> str:
    """What `small_chain` answers to `{"input": question}`."""
    return f"echo: {question}"


ALLOWED_CLASSES = (
    f"{__name__}:EchoChatModel",
    f"{__name__}:EchoRunnable",
    f"{__name__}:TokenStreamModel",
)
