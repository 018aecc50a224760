"""Where a worker's runnables come from: shipped JSON (cached by digest) or registered code
in the worker image, run by reference (`ref="pkg.mod:attr"`).

What cannot travel as JSON (RunnableLambda, tools, compiled LangGraph graphs) runs by name,
as Celery runs tasks by name. A reference is checked against `RUNNABLE_K8S_ALLOWED_REFS`
*before* anything is imported, since importing a module runs its code.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

from langchain_core.runnables import Runnable

from runnable_k8s.errors import ConfigurationError, DisallowedObject
from runnable_k8s.protocol.allowlist import import_object
from runnable_k8s.protocol.messages import Protocol, RunRequest
from runnable_k8s.worker.metrics import WorkerMetrics

REF_PATTERN: Final = re.compile(
    r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$"
)


def ref_allowed(ref: str, allowed: tuple[str, ...]) -> bool:
    """Whether `ref` matches an entry: exact `module:attr`, or a prefix ending in `.` or `:`."""
    for entry in allowed:
        if entry.endswith((".", ":")):
            if ref.startswith(entry):
                return True
        elif ref == entry:
            return True
    return False


class Registry:
    """Loads allowed references once per process. An attribute may be a runnable, or a
    factory (sync or async callable) returning one, called once: e.g. a LangGraph graph
    compiled with a checkpointer that needs the event loop to connect. A graph compiled with
    a sync-only checkpointer (`SqliteSaver`, `PostgresSaver`) is adapted once, here, to run on
    the event loop (see sync_graphs.py)."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self._allowed = allowed
        self._loaded: dict[str, Runnable[Any, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def load(self, ref: str) -> Runnable[Any, Any]:
        """Raises: DisallowedObject for a malformed, unlisted or broken reference."""
        cached = self._loaded.get(ref)
        if cached is not None:
            return cached
        if not REF_PATTERN.match(ref):
            raise DisallowedObject(f"{ref[:200]!r} is not a reference like 'package.module:name'")
        if not ref_allowed(ref, self._allowed):
            raise DisallowedObject(
                f"reference {ref!r} is not in this worker's RUNNABLE_K8S_ALLOWED_REFS"
            )
        async with self._locks.setdefault(ref, asyncio.Lock()):
            if ref in self._loaded:
                return self._loaded[ref]
            runnable = await self._build(ref)
            self._loaded[ref] = runnable
            return runnable

    async def _build(self, ref: str) -> Runnable[Any, Any]:
        try:
            obj = import_object(ref)
        except ConfigurationError as exc:
            raise DisallowedObject(f"cannot import reference {ref!r}: {exc}") from exc
        if not isinstance(obj, Runnable) and callable(obj):
            try:
                obj = obj()
                if inspect.isawaitable(obj):
                    obj = await obj
            except Exception as exc:  # not cached: the next run tries the factory again
                raise DisallowedObject(
                    f"factory {ref!r} failed: {type(exc).__name__}: {exc}"[:500]
                ) from exc
        if not isinstance(obj, Runnable):
            raise DisallowedObject(f"reference {ref!r} is a {type(obj).__name__}, not a Runnable")
        # A compiled graph exists only once LangGraph is imported; workers without it skip this.
        if "langgraph.pregel" in sys.modules:
            from runnable_k8s.worker.sync_graphs import with_async_checkpointer

            obj = await with_async_checkpointer(obj, ref)
        return obj


_CACHE_SIZE: Final = 256


class RunnableSource:
    """Loads the runnable of a verified request. Shipped runnables are rebuilt once per
    digest (rebuilding costs more than running a small chain); references come from the
    registry."""

    def __init__(
        self,
        protocol: Protocol,
        registry: Registry,
        metrics: WorkerMetrics,
        prepare: Callable[[Runnable[Any, Any]], None] = lambda runnable: None,
    ) -> None:
        self._protocol = protocol
        self._registry = registry
        self._metrics = metrics
        # Called once per runnable loaded (e.g. to set the flow-control limiter on its models).
        self._prepare = prepare
        self._prepared: set[int] = set()
        self._cache: OrderedDict[str, Runnable[Any, Any]] = OrderedDict()

    async def load(self, request: RunRequest) -> Runnable[Any, Any]:
        """Raises: DisallowedObject. Only names of runnables that loaded (passed the
        allowlist) become metric labels."""
        if request.ref is not None:
            loaded = await self._registry.load(request.ref)
            if id(loaded) not in self._prepared:  # the registry keeps each for the process
                self._prepare(loaded)
                self._prepared.add(id(loaded))
            self._metrics.names.admit(request.name)
            return loaded
        digest = hashlib.sha256(request.runnable).hexdigest()
        cached = self._cache.get(digest)
        if cached is not None:
            self._cache.move_to_end(digest)
            self._metrics.cache_hits.inc()
        else:
            self._metrics.cache_misses.inc()
            cached = self._protocol.runnables.decode_runnable(request.runnable)
            self._prepare(cached)
            self._cache[digest] = cached
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        self._metrics.names.admit(request.name)
        return cached
