"""Serializable test runnables. Workers import them (PYTHONPATH is the repo root) because the
test settings add them to RUNNABLE_K8S_ALLOWED_CLASSES, as a user would add their own."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import ensure_config
from pydantic import PrivateAttr

NAMESPACE = ["tests", "support", "models"]


class _Serializable:
    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return NAMESPACE


class SlowModel(_Serializable, BaseChatModel):
    """Waits `delay` seconds (as an LLM call would), then echoes the last message.
    Streams `chunks` chunks, waiting `delay` before each."""

    delay: float = 0.2
    chunks: int = 3

    @property
    def _llm_type(self) -> str:
        return "slow-test"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: Any = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kw: Any,
    ) -> ChatResult:
        raise NotImplementedError("async only")

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        await asyncio.sleep(self.delay)
        text = f"echo: {messages[-1].content}"
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(self, *args: Any, **kw: Any) -> Iterator[ChatGenerationChunk]:
        raise NotImplementedError("async only")

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        for index in range(self.chunks):
            await asyncio.sleep(self.delay)
            token = f"part{index} "
            if run_manager:
                await run_manager.on_llm_new_token(token)
            yield ChatGenerationChunk(message=AIMessageChunk(content=token))


class BurstModel(_Serializable, BaseChatModel):
    """Streams `tokens` chunks (`"b0 "`, `"b1 "`, ...) as fast as it can, never waiting, as a
    model whose tokens are all buffered would; with `fail_after`, raises ValueError after that
    many chunks."""

    tokens: int = 1000
    fail_after: int | None = None

    @property
    def _llm_type(self) -> str:
        return "burst-test"

    def _generate(self, *args: Any, **kw: Any) -> ChatResult:
        raise NotImplementedError("stream only")

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        for index in range(self.tokens):
            if index == self.fail_after:
                raise ValueError(f"the burst broke after {index} chunks")
            yield ChatGenerationChunk(message=AIMessageChunk(content=f"b{index} "))


class FailingModel(_Serializable, BaseChatModel):
    """Raises `ValueError(message)` from a nested helper (so the traceback has depth)."""

    message: str = "the model refused"

    @property
    def _llm_type(self) -> str:
        return "failing-test"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        _explode(self.message)
        raise AssertionError("unreachable")


def _explode(message: str) -> None:
    raise ValueError(message)


class ConfigProbe(_Serializable, RunnableSerializable[Any, dict[str, Any]]):
    """Returns the travelling parts of the config it ran with, and its input."""

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kw: Any) -> dict[str, Any]:
        config = ensure_config(config)
        return {
            "input": input,
            "tags": sorted(config.get("tags", [])),
            "metadata": {
                k: v
                for k, v in config.get("metadata", {}).items()
                if not k.startswith("ls_") and k not in ("lc_versions",)
            },
            "run_name": config.get("run_name"),
            "configurable": dict(config.get("configurable", {})),
            "recursion_limit": config.get("recursion_limit"),
            "max_concurrency": config.get("max_concurrency"),
            "kwargs": dict(kw),  # what `.bind(...)` or the call added
        }


class GcProbe(_Serializable, RunnableSerializable[Any, dict[str, int]]):
    """Reports the garbage-collector settings of the process it runs in."""

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kw: Any) -> dict[str, int]:
        return {"threshold": gc.get_threshold()[0], "frozen": gc.get_freeze_count()}


class TransientError(RuntimeError):
    """Stands in for a provider's rate-limit error."""


class FlakyModel(_Serializable, BaseChatModel):
    """Fails `failures` times with TransientError, then answers. `token` makes each test's
    instance distinct (workers cache loaded runnables by digest)."""

    failures: int = 2
    token: str = ""
    _calls: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "flaky-test"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self._calls += 1
        if self._calls <= self.failures:
            raise TransientError(f"rate limited (call {self._calls})")
        text = f"ok after {self._calls} calls"
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


TEST_CLASSES = ",".join(
    f"tests.support.models:{name}"
    for name in (
        "SlowModel",
        "BurstModel",
        "FailingModel",
        "ConfigProbe",
        "FlakyModel",
        "LoopBlockingModel",
        "GcProbe",
    )
)


class LoopBlockingModel(_Serializable, BaseChatModel):
    """Calls `time.sleep(seconds)` on the worker's event loop (the bug a liveness probe must
    catch: a wedged loop stalls every run of the process), then answers."""

    seconds: float = 3.0

    @property
    def _llm_type(self) -> str:
        return "loop-blocking-test"

    def _generate(self, *args: Any, **kw: Any) -> ChatResult:
        raise NotImplementedError("async only")

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        import time

        time.sleep(self.seconds)  # deliberately blocking the loop
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="unblocked"))])
