"""`RunnableK8s.batch` and `abatch`: inputs in chunks (one run per chunk), a window of runs in
flight honouring `max_concurrency`, and each result placed at its input's index.

A mixin of `RunnableK8s`, as `GraphStateAPI` is: the request it builds per chunk is the
runnable's own (`_request`), so a chunk travels exactly as an invoke does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import get_config_list
from langchain_core.runnables.utils import Input, Output

from runnable_k8s.errors import RunnableK8sError
from runnable_k8s.producer.aclient import async_client_for
from runnable_k8s.producer.client import client_for
from runnable_k8s.producer.results import unwrap_items
from runnable_k8s.protocol.remote_config import export_config
from runnable_k8s.store.threads import thread_of

if TYPE_CHECKING:
    from runnable_k8s.protocol.graph_state import GraphCall
    from runnable_k8s.protocol.messages import Mode, Outcome, RunRequest
    from runnable_k8s.settings import Settings
    from runnable_k8s.store.threads import Strategy


class BatchAPI(Runnable[Input, Output]):
    """The batch entry points of `RunnableK8s` (which supplies `_request`, `_strategy`, `_wait`)."""

    settings: Settings

    if TYPE_CHECKING:

        @property
        def _wait(self) -> float: ...

        def _strategy(self, kwargs: dict[str, Any]) -> Strategy: ...

        def _request(
            self,
            mode: Mode,
            payload: Any,
            config: dict[str, Any],
            kwargs: dict[str, Any],
            configs: list[dict[str, Any]] | None = None,
            *,
            run_manager: Any = None,
            events: bool = False,
            webhook: str | None = None,
            graph: GraphCall | None = None,
        ) -> RunRequest: ...

    def _chunking(self, count: int, configs: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """(inputs per task, tasks in flight) honouring `max_concurrency`."""
        limit = configs[0].get("max_concurrency") if configs else None
        # A run holds one thread: inputs on threads travel one per task.
        size = 1 if any(thread_of(c) for c in configs) else self.settings.batch_chunk_size
        if not limit:
            return size, max(1, -(-count // size))
        size = max(1, min(size, limit))
        return size, max(1, limit // size)

    def _batch_requests(
        self, inputs: Sequence[Input], configs: Sequence[dict[str, Any]], kwargs: dict[str, Any]
    ) -> list[tuple[int, int, RunRequest]]:
        """(first index, input count, request) per task."""
        size, _ = self._chunking(len(inputs), configs)
        requests = []
        for start in range(0, len(inputs), size):
            part = list(inputs[start : start + size])
            part_configs = list(configs[start : start + size])
            request = self._request("batch", part, part_configs[0], kwargs, part_configs)
            requests.append((start, len(part), request))
        return requests

    def batch(
        self,
        inputs: list[Input],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[Output]:
        if not inputs:
            return []
        remote = [export_config(c) for c in get_config_list(config, len(inputs))]
        return self._batch_with_config(
            self._batch,
            inputs,
            config,
            return_exceptions=return_exceptions,
            _remote=remote,
            **kwargs,
        )

    def _batch(
        self,
        inputs: list[Input],
        run_manager: list[CallbackManagerForChainRun],
        config: list[RunnableConfig],
        **kwargs: Any,
    ) -> list[Exception | Output]:
        client = client_for(self.settings)
        remote = kwargs.pop("_remote")
        strategy = self._strategy(kwargs)
        requests = self._batch_requests(inputs, remote, kwargs)
        _, window = self._chunking(len(inputs), remote)
        results: list[Any] = [None] * len(inputs)
        pending: dict[str, tuple[int, int]] = {}
        queue = list(reversed(requests))
        try:
            while queue or pending:
                batch: list[RunRequest] = []
                while queue and len(pending) + len(batch) < window:
                    start, count, request = queue.pop()
                    pending[request.run_id] = (start, count)
                    batch.append(request)
                if batch:
                    client.submit(batch, strategy=strategy)
                for event in client.events(list(pending), timeout=self._wait):
                    if event.outcome is not None:
                        self._place(results, pending.pop(event.run_id), event.outcome)
                        break
        except RunnableK8sError as exc:
            for start, count in pending.values():
                results[start : start + count] = [exc] * count
            for start, count, _ in queue:
                results[start : start + count] = [exc] * count
        return results

    def _place(self, results: list[Any], span: tuple[int, int], outcome: Outcome) -> None:
        start, count = span
        protocol = client_for(self.settings).protocol
        results[start : start + count] = unwrap_items(protocol, outcome, count)

    async def abatch(
        self,
        inputs: list[Input],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[Output]:
        if not inputs:
            return []
        remote = [export_config(c) for c in get_config_list(config, len(inputs))]
        return await self._abatch_with_config(
            self._abatch,
            inputs,
            config,
            return_exceptions=return_exceptions,
            _remote=remote,
            **kwargs,
        )

    async def _abatch(
        self,
        inputs: list[Input],
        run_manager: list[AsyncCallbackManagerForChainRun],
        config: list[RunnableConfig],
        **kwargs: Any,
    ) -> list[Exception | Output]:
        client = async_client_for(self.settings)
        remote = kwargs.pop("_remote")
        strategy = self._strategy(kwargs)
        requests = self._batch_requests(inputs, remote, kwargs)
        _, window = self._chunking(len(inputs), remote)
        results: list[Any] = [None] * len(inputs)
        gate = asyncio.Semaphore(window)

        async def run_one(start: int, count: int, request: RunRequest) -> None:
            async with gate:
                try:
                    await client.submit([request], strategy=strategy)
                    outcome = await client.outcome(request.run_id, timeout=self._wait)
                    results[start : start + count] = unwrap_items(client.protocol, outcome, count)
                except RunnableK8sError as exc:
                    results[start : start + count] = [exc] * count

        await asyncio.gather(*(run_one(*entry) for entry in requests))
        return results
