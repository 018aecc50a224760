"""`StrOutputParser` parses on the worker's event loop instead of in a thread, whole or streamed.

LangChain's `BaseOutputParser.aparse_result` (what `ainvoke` and `abatch` call) runs the sync
`parse_result` in the loop's default executor, since a parser may be slow or blocking. For
the exact `StrOutputParser` it returns the first generation's text: a few microseconds, no
I/O, no context variables. The hop to a thread and back cost more than the rest of a small
chain's parser (about 0.2 ms of a 0.9 ms `ainvoke` measured in W1), and it queues behind every
other run's executor work. Subclasses, which may override `parse`, keep LangChain's path; so
does every other parser. Callbacks and tracing are unchanged: they fire around this call.

Streaming pays the same hop once per chunk (`BaseTransformOutputParser._atransform` runs
`parse_result` in the executor for every token), which at LLM speeds is most of the parser's
cost per token: the exact `StrOutputParser` yields each chunk's text on the loop instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, Generation

_MARK = "_runnable_k8s_inline"


def install() -> None:
    """Once per process (a worker's): later calls find it installed and do nothing."""
    original = StrOutputParser.aparse_result
    if getattr(original, _MARK, False):
        return

    async def aparse_result(
        self: StrOutputParser, result: list[Generation], *, partial: bool = False
    ) -> Any:
        if type(self) is StrOutputParser:
            return self.parse_result(result, partial=partial)
        return await original(self, result, partial=partial)

    setattr(aparse_result, _MARK, True)
    StrOutputParser.aparse_result = aparse_result  # type: ignore[method-assign,assignment]

    original_stream = StrOutputParser._atransform

    async def _atransform(
        self: StrOutputParser, input: AsyncIterator[str | BaseMessage]
    ) -> AsyncIterator[str]:
        if type(self) is not StrOutputParser:
            async for parsed in original_stream(self, input):
                yield parsed
            return
        async for chunk in input:  # LangChain's own loop, without `run_in_executor`
            if isinstance(chunk, BaseMessage):
                yield self.parse_result([ChatGeneration(message=chunk)])
            else:
                yield self.parse_result([Generation(text=chunk)])

    StrOutputParser._atransform = _atransform  # type: ignore[method-assign,assignment]
