"""A deterministic, serializable chat model for the demo and for trying things without a key.

LangChain's own fake models do not serialize, so they cannot travel to a worker; this one
does (its namespace is this module, allowlisted by default). It answers a few Pokemon
questions from a small table and otherwise restates the question.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

_FACTS = {
    "pikachu": "Pikachu evolves from Pichu (with high friendship) and into Raichu with a "
    "Thunder Stone.",
    "charizard": "Charizard evolves from Charmeleon at level 36; Charmander starts the line.",
    "eevee": "Eevee has eight evolutions, among them Vaporeon, Jolteon, Flareon and Sylveon.",
    "bulbasaur": "Bulbasaur evolves into Ivysaur at level 16 and Venusaur at level 32.",
}


def answer(question: str) -> str:
    lowered = question.lower()
    for name, fact in _FACTS.items():
        if name in lowered:
            return fact
    return f"I am the demo model and only know a few Pokemon. You asked: {question.strip()}"


class DemoChatModel(BaseChatModel):
    """Answers deterministically; streams word by word, optionally with a delay per chunk."""

    chunk_delay: float = 0.0
    """Seconds to wait before each streamed chunk (to show streaming)."""

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["runnable_k8s", "models"]

    @property
    def _llm_type(self) -> str:
        return "runnable-k8s-demo"

    def _text(self, messages: list[BaseMessage]) -> str:
        question = str(messages[-1].content) if messages else ""
        return answer(question)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = self._text(messages)
        usage = {"input_tokens": 10, "output_tokens": len(text.split()), "total_tokens": 0}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        message = AIMessage(content=text, usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        words = self._text(messages).split(" ")
        for index, word in enumerate(words):
            token = word if index == 0 else " " + word
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=token))
            if run_manager:
                run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        words = self._text(messages).split(" ")
        for index, word in enumerate(words):
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            token = word if index == 0 else " " + word
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=token))
            if run_manager:
                await run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk
