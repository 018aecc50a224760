"""The worker's `StrOutputParser` parses on the loop; other parsers keep LangChain's thread."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.output_parsers import StrOutputParser

from runnable_k8s.worker import inline_parsers


class _Counting(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.calls = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().submit(*args, **kwargs)


class _Shouting(StrOutputParser):
    def parse(self, text: str) -> str:
        return text.upper()


class _Ends(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.outputs: list[Any] = []

    async def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        self.outputs.append(outputs)


def test_str_parser_runs_inline_and_a_subclass_keeps_its_parse() -> None:
    inline_parsers.install()
    inline_parsers.install()  # idempotent: not wrapped twice

    async def main() -> tuple[int, int, list[Any], str, list[Any]]:
        executor = _Counting()
        asyncio.get_running_loop().set_default_executor(executor)
        ends = _Ends()
        text = await StrOutputParser().ainvoke(AIMessage("hi"), {"callbacks": [ends]})
        batch = await StrOutputParser().abatch([AIMessage("a"), AIMessage("b")])
        inline = executor.calls
        shouted = await _Shouting().ainvoke(AIMessage("hi"))
        assert text == "hi"
        return inline, executor.calls, ends.outputs, shouted, batch

    inline, total, outputs, shouted, batch = asyncio.run(main())
    assert inline == 0  # no thread hop for the plain parser
    assert total >= 1  # the subclass went through LangChain's executor path
    assert shouted == "HI"
    assert batch == ["a", "b"]
    assert outputs == ["hi"]  # callbacks (and so tracing) still see the parser's run


def test_str_parser_streams_inline_and_a_subclass_keeps_its_parse() -> None:
    inline_parsers.install()

    async def chunks() -> Any:
        for text in ("a", "b", "c"):
            yield AIMessageChunk(content=text)

    async def main() -> tuple[list[str], int, list[str], int]:
        executor = _Counting()
        asyncio.get_running_loop().set_default_executor(executor)
        streamed = [c async for c in StrOutputParser().atransform(chunks())]
        inline = executor.calls
        shouted = [c async for c in _Shouting().atransform(chunks())]
        return streamed, inline, shouted, executor.calls

    streamed, inline, shouted, total = asyncio.run(main())
    assert streamed == ["a", "b", "c"]
    assert inline == 0  # no thread hop per chunk for the plain parser
    assert shouted == ["A", "B", "C"]
    assert total >= 3  # the subclass went through LangChain's executor, chunk by chunk
