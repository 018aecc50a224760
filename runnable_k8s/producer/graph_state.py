"""The compiled graph's state API on `RunnableK8s(ref=graph)`: `get_state`, `get_state_history`,
`update_state` and their async forms, with LangGraph's signatures and return types, so code
written for a `CompiledStateGraph` (an agent UI's thread view, approval and edit screens) works
on the remote graph unchanged.

Each call is a short run of its own on a worker (the checkpointer lives there), made like any
run: signed, on the run's queue, by reference only, with the run's timeout. Its answer is
rebuilt as LangGraph's `StateSnapshot` (see `protocol.graph_state`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig

from runnable_k8s.errors import (
    ConfigurationError,
    DisallowedObject,
    SerializationRefused,
)
from runnable_k8s.producer.aclient import async_client_for
from runnable_k8s.producer.client import client_for
from runnable_k8s.producer.results import unwrap
from runnable_k8s.protocol.graph_state import GraphCall, snapshot_from_data
from runnable_k8s.protocol.remote_config import export_config

if TYPE_CHECKING:
    from runnable_k8s.protocol.messages import Mode, RunRequest
    from runnable_k8s.settings import Settings


class GraphStateAPI:
    """The state API of a compiled LangGraph graph run by reference (a mixin of `RunnableK8s`).

    Not supported: `bulk_update_state`, and `update_state` on a graph shipped with `bound=`
    (graphs cannot travel as JSON: run them by reference).
    """

    ref: str | None
    settings: Settings

    if TYPE_CHECKING:

        @property
        def _wait(self) -> float: ...

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
            graph: GraphCall | None = None,
        ) -> RunRequest: ...

    # -- building and running one call -----------------------------------------------------

    def _graph_request(self, call: GraphCall, config: RunnableConfig, values: Any) -> RunRequest:
        if self.ref is None:
            raise ConfigurationError(
                f"{call.op} needs RunnableK8s(ref='package.module:graph'): a graph's state lives "
                "in its checkpointer on the workers, and graphs run by reference"
            )
        return self._request("invoke", values, export_config(config), {}, graph=call)

    def _call(self, call: GraphCall, config: RunnableConfig, values: Any = None) -> tuple[Any, str]:
        """(the decoded answer, the run's id)."""
        client = client_for(self.settings)
        request = self._graph_request(call, config, values)
        client.submit([request])
        outcome = client.outcome(request.run_id, timeout=self._wait)
        return unwrap(client.protocol, outcome), request.run_id

    async def _acall(
        self, call: GraphCall, config: RunnableConfig, values: Any = None
    ) -> tuple[Any, str]:
        client = async_client_for(self.settings)
        request = self._graph_request(call, config, values)
        await client.submit([request])
        outcome = await client.outcome(request.run_id, timeout=self._wait)
        return unwrap(client.protocol, outcome), request.run_id

    # -- get_state ----------------------------------------------------------------------------

    def get_state(self, config: RunnableConfig, *, subgraphs: bool = False) -> Any:
        """The thread's current `StateSnapshot`, as the compiled graph's `get_state` returns it.

        Raises:
            ConfigurationError: not a `ref=` runnable, or a `thread_id` that is not a string.
            RemoteError: what the graph raised (e.g. "No checkpointer set"); `RunRejected` when
                the worker does not allow the reference.
        """
        answer, run_id = self._call(GraphCall("get_state", subgraphs=subgraphs), config)
        return snapshot_from_data(answer, run_id=run_id)

    async def aget_state(self, config: RunnableConfig, *, subgraphs: bool = False) -> Any:
        """`get_state` without blocking the event loop."""
        answer, run_id = await self._acall(GraphCall("get_state", subgraphs=subgraphs), config)
        return snapshot_from_data(answer, run_id=run_id)

    # -- get_state_history ----------------------------------------------------------------------

    def get_state_history(
        self,
        config: RunnableConfig,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[Any]:
        """The thread's snapshots, newest first (fetched in one call, then iterated).

        Raises:
            SerializationRefused: `filter` is not JSON.
        """
        answer, run_id = self._call(_history(filter, before, limit), config)
        yield from _snapshots(answer, run_id)

    async def aget_state_history(
        self,
        config: RunnableConfig,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Any]:
        """`get_state_history` without blocking the event loop."""
        answer, run_id = await self._acall(_history(filter, before, limit), config)
        for snapshot in _snapshots(answer, run_id):
            yield snapshot

    # -- update_state ---------------------------------------------------------------------------

    def update_state(
        self,
        config: RunnableConfig,
        values: dict[str, Any] | Any | None,
        as_node: str | None = None,
        task_id: str | None = None,
    ) -> RunnableConfig:
        """Write `values` to the thread as if node `as_node` returned them; returns the config
        of the new checkpoint, as the compiled graph's `update_state` does.

        Raises:
            SerializationRefused: `values` cannot travel (the message names the field).
            RemoteError: what LangGraph raised, e.g. `InvalidUpdateError` for an unknown node.
        """
        call = GraphCall("update_state", as_node=as_node, task_id=task_id)
        answer, _ = self._call(call, config, values)
        return _config(answer)

    async def aupdate_state(
        self,
        config: RunnableConfig,
        values: dict[str, Any] | Any,
        as_node: str | None = None,
        task_id: str | None = None,
    ) -> RunnableConfig:
        """`update_state` without blocking the event loop."""
        call = GraphCall("update_state", as_node=as_node, task_id=task_id)
        answer, _ = await self._acall(call, config, values)
        return _config(answer)


def _history(
    filter: dict[str, Any] | None, before: RunnableConfig | None, limit: int | None
) -> GraphCall:
    if filter is not None:
        exported = export_config({"metadata": filter}).get("metadata", {})
        if exported != filter:
            raise SerializationRefused("get_state_history filter= must be a dict of JSON values")
    if limit is not None and (type(limit) is not int or limit < 0):
        raise ConfigurationError(f"limit must be a non-negative int, not {limit!r}")
    exported_before = export_config(before) if before is not None else None
    return GraphCall("get_state_history", filter=filter, before=exported_before, limit=limit)


def _snapshots(answer: Any, run_id: str) -> list[Any]:
    if not isinstance(answer, list):
        raise DisallowedObject(f"run {run_id} returned a malformed state history")
    return [snapshot_from_data(item, run_id=run_id) for item in answer]


def _config(answer: Any) -> RunnableConfig:
    if not isinstance(answer, dict):
        raise DisallowedObject("update_state returned a malformed config")
    return RunnableConfig(**answer)  # type: ignore[typeddict-item]
