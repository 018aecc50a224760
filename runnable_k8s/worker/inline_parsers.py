"""`StrOutputParser` parses on the worker's event loop instead of in a thread.

LangChain's `BaseOutputParser.aparse_result` (what `ainvoke` and `abatch` call) runs the sync
`parse_result` in the loop's default executor, since a parser may be slow or blocking. For
the exact `StrOutputParser` it returns the first generation's text: a few microseconds, no
I/O, no context variables. The hop to a thread and back cost more than the rest of a small
chain's parser (about 0.2 ms of a 0.9 ms `ainvoke` measured in W1), and it queues behind every
other run's executor work. Subclasses, which may override `parse`, keep LangChain's path; so
does every other parser. Callbacks and tracing are unchanged: they fire around this call.
"""

from __future__ import annotations

from typing import Any

from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import Generation

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
