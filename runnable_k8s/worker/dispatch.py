"""What a started run calls: its runnable loaded and its input decoded (`prepare`), then the
one call its mode asks for (`call`): `ainvoke`; `abatch`, each item's outcome encoded in its
place; a stream, published as it comes (worker/streaming.py); or a graph's state API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig

from runnable_k8s.errors import DisallowedObject
from runnable_k8s.protocol.allowlist import check_call_kwargs
from runnable_k8s.protocol.batch import ItemFailed, encode_items
from runnable_k8s.protocol.interrupts import has_interrupts
from runnable_k8s.protocol.messages import RunRequest
from runnable_k8s.protocol.remote_config import import_config
from runnable_k8s.protocol.tracing import remote_parent, sanitize
from runnable_k8s.worker.failures import describe
from runnable_k8s.worker.flow import FlowControl
from runnable_k8s.worker.graph_state import call_graph
from runnable_k8s.worker.graphs import graph_stream
from runnable_k8s.worker.registry import RunnableSource
from runnable_k8s.worker.stream_writer import Progress, StreamHost
from runnable_k8s.worker.streaming import StreamPublisher


@dataclass(frozen=True, slots=True)
class Prepared:
    """A run ready to call: its runnable, decoded input and config."""

    runnable: Runnable[Any, Any]
    payload: Any
    config: RunnableConfig


class Dispatcher:
    def __init__(self, host: StreamHost, runnables: RunnableSource, flow: FlowControl) -> None:
        self._host = host
        self._runnables = runnables
        self._flow = flow

    async def prepare(self, request: RunRequest) -> Prepared:
        """Raises:
        DisallowedObject, SerializationRefused: what this worker refuses to build or call.
        Anything else: what loading a registered runnable raised."""
        runnable = await self._runnables.load(request)
        config = import_config(request.config)
        payload = self._host.protocol.data.decode_data(request.input)
        if request.kwargs:
            check_call_kwargs(request.kwargs)
        return Prepared(runnable, payload, config)

    async def call(
        self, request: RunRequest, prepared: Prepared, progress: Progress
    ) -> tuple[bytes, bool]:
        """The encoded output, and whether a graph stopped at `interrupt()`."""
        data = self._host.protocol.data
        runnable, payload, config = prepared.runnable, prepared.payload, prepared.config
        call = request.kwargs or {}  # checked in `prepare`
        with remote_parent(sanitize(request.trace)), self._flow.run(request.run_id):
            if request.graph is not None:  # the graph's state API: see `graph_state`
                answer = await call_graph(runnable, request.graph, payload, config, request.ref)
                return data.encode_data(answer, what="output"), False
            if request.mode == "invoke":
                output = await runnable.ainvoke(payload, config, **call)
                return data.encode_data(output, what="output"), has_interrupts(output)
            if request.mode == "batch":
                if not isinstance(payload, list) or len(payload) != len(request.configs or []):
                    raise DisallowedObject("batch inputs and configs do not match")
                configs = [import_config(c) for c in request.configs or []]
                outputs = await runnable.abatch(payload, configs, return_exceptions=True, **call)
                redact = self._host.settings.redact_values
                items = encode_items(
                    [
                        ItemFailed(describe(out, redact)) if isinstance(out, BaseException) else out
                        for out in outputs
                    ]
                )
                # Each item tells its own interrupts; the batch as a whole succeeded.
                return data.encode_data(items, what="output"), False
            publisher = StreamPublisher(self._host, request.run_id, progress)
            # A graph's chunks do not add up to what `invoke` returns: see `graphs`.
            graph = graph_stream(runnable, call)
            if request.events:
                events = runnable.astream_events(payload, config, version="v2", **call)
                final = await publisher.events(events, ended=graph is not None)
            elif graph is not None:
                chunks = runnable.astream(payload, config, **graph.kwargs)
                final = await publisher.graph(chunks, graph)
            else:
                final = await publisher.chunks(runnable.astream(payload, config, **call))
            return data.encode_data(final, what="output"), has_interrupts(final)
