"""`RunnableK8s`: a LangChain Runnable whose work happens on a Celery worker.

Every entry point goes through LangChain's `_call_with_config` / `_batch_with_config` helpers,
so the caller's callbacks and tracers see the remote step as one run with its input and output.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config, get_async_callback_manager_for_config
from langchain_core.runnables.graph import Graph
from langchain_core.runnables.utils import ConfigurableFieldSpec, Input, Output
from pydantic import BaseModel

from runnable_k8s.errors import (
    ConfigurationError,
    DisallowedObject,
    SerializationRefused,
)
from runnable_k8s.producer.aclient import async_client_for
from runnable_k8s.producer.batching import BatchAPI
from runnable_k8s.producer.client import client_for, new_run_id
from runnable_k8s.producer.graph_state import GraphStateAPI
from runnable_k8s.producer.handles import RemoteRun
from runnable_k8s.producer.replay import EventReplayer, wants_events
from runnable_k8s.producer.results import error_for, unwrap
from runnable_k8s.protocol.allowlist import check_call_kwargs
from runnable_k8s.protocol.codec import runnable_codec
from runnable_k8s.protocol.graph_state import GraphCall
from runnable_k8s.protocol.messages import COMPLETED_STATES, Mode, RunRequest
from runnable_k8s.protocol.priority import check as priority_of
from runnable_k8s.protocol.remote_config import export_config
from runnable_k8s.protocol.tracing import trace_headers
from runnable_k8s.protocol.webhook import check_webhook
from runnable_k8s.settings import Settings
from runnable_k8s.store.threads import DEFAULT as DEFAULT_STRATEGY
from runnable_k8s.store.threads import Strategy, check_strategy


class RunnableK8s(GraphStateAPI, BatchAPI[Input, Output]):
    """Run `bound` (or the registered runnable `ref`) on runnable-k8s workers.

    Example:
        chain = prompt | RunnableK8s(bound=llm) | StrOutputParser()

    Args:
        bound: a runnable that serializes to LangChain JSON (checked here, at construction).
        ref: instead of `bound`, `"package.module:attribute"` of a runnable in the worker image.
        settings: defaults to `Settings.from_env()`.
        timeout: seconds a caller waits for a result (default `settings.wait_timeout`).
        time_limit: execution limit on the worker (the lower of this and the worker's own).
        name: the name callbacks and workers see (default: the bound runnable's name).
        multitask_strategy: what a run does when another run of its `configurable.thread_id`
            is queued or running: "enqueue" (default: wait its turn), "reject" (fail with
            ThreadBusy), "interrupt" (stop the active run, keeping its checkpoints, then run)
            or "rollback" (cancel the active run and discard its checkpoints, then run).
            Per call: `invoke(..., multitask_strategy=...)` (also stream, batch, submit).
        priority: "high", "normal" (default) or "low": which queue list runs wait on; each
            call may override it with `priority=` (README, "Priorities").

    Raises:
        SerializationRefused: `bound` cannot travel; the message names the object at fault.
        ConfigurationError: neither or both of `bound` and `ref`.
        UnknownMultitaskStrategy: `multitask_strategy` is not one of the four.
        UnknownPriority: `priority` is not one of the three.

    `batch` and `abatch` send inputs in chunks, one run each (see `BatchAPI`). A compiled
    LangGraph graph run by reference also offers its state API: `get_state`,
    `get_state_history`, `update_state` and their async forms (see `GraphStateAPI`).

    Not supported: callbacks inside the remote run report to the caller only as the one
    remote step (plus streamed chunks); Python objects in `config` other than the
    JSON-safe keys (tags, metadata, run_name, configurable, recursion_limit,
    max_concurrency) stay on the caller.
    """

    def __init__(
        self,
        bound: Runnable[Input, Output] | None = None,
        *,
        ref: str | None = None,
        settings: Settings | None = None,
        timeout: float | None = None,
        time_limit: float | None = None,
        name: str | None = None,
        multitask_strategy: Strategy = DEFAULT_STRATEGY,
        priority: str | None = None,
    ) -> None:
        self.multitask_strategy = check_strategy(multitask_strategy)
        if (bound is None) == (ref is None):
            raise ConfigurationError("RunnableK8s needs exactly one of bound= or ref=")
        self.bound = bound
        self.ref = ref
        self.settings = settings if settings is not None else Settings.from_env()
        self.timeout = timeout
        self.time_limit = time_limit
        self.priority = priority_of(priority)
        self.name = name or (bound.get_name() if bound is not None else str(ref))
        # Serialized once: the runnable is immutable configuration, and dumping plus checking
        # it is the most expensive part of a call.
        self._encoded = (
            runnable_codec(self.settings.allowed_classes).encode_runnable(bound)
            if bound is not None
            else b""
        )

    def __repr__(self) -> str:
        target = repr(self.bound) if self.bound is not None else f"ref={self.ref!r}"
        return f"RunnableK8s({target})"

    # -- schema pass-through ----------------------------------------------------------------

    @property
    def InputType(self) -> Any:
        return self.bound.InputType if self.bound is not None else Any

    @property
    def OutputType(self) -> Any:
        return self.bound.OutputType if self.bound is not None else Any

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        if self.bound is not None:
            return cast(type[BaseModel], self.bound.get_input_schema(config))
        return cast(type[BaseModel], super().get_input_schema(config))

    def get_output_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        if self.bound is not None:
            return cast(type[BaseModel], self.bound.get_output_schema(config))
        return cast(type[BaseModel], super().get_output_schema(config))

    @property
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        return self.bound.config_specs if self.bound is not None else []

    def get_graph(self, config: RunnableConfig | None = None) -> Graph:
        if self.bound is not None:
            return self.bound.get_graph(config)
        return super().get_graph(config)

    # -- requests ---------------------------------------------------------------------------

    @property
    def _wait(self) -> float:
        return self.timeout if self.timeout is not None else self.settings.wait_timeout

    def _runnable_bytes(self, kwargs: dict[str, Any]) -> bytes:
        if not kwargs or self.bound is None:
            return self._encoded
        # `.bind(stop=...)` on RunnableK8s (or kwargs to invoke) apply to the remote runnable.
        return runnable_codec(self.settings.allowed_classes).encode_runnable(
            self.bound.bind(**kwargs)
        )

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
    ) -> RunRequest:
        """Build a request. `config`/`configs` are already exported (JSON-safe); a
        `priority` among `kwargs` is this call's, not the runnable's.

        Raises:
            UnknownPriority, WebhookRefused: before anything is enqueued.
        """
        data = client_for(self.settings).protocol.data
        chosen = kwargs.get("priority")
        if "priority" in kwargs:
            kwargs = {k: v for k, v in kwargs.items() if k != "priority"}
        return RunRequest(
            run_id=new_run_id(),
            mode=mode,
            name=self.name or "",
            runnable=self._runnable_bytes(kwargs),
            input=data.encode_data(payload, what="input"),
            expires_at=time.time() + self.settings.run_expiry,
            ref=self.ref,
            config=config,
            configs=configs,
            trace=trace_headers(run_manager) if run_manager is not None else None,
            time_limit=self.time_limit,
            events=events,
            kwargs=self._call_kwargs(kwargs),
            priority=self.priority if chosen is None else priority_of(chosen),
            webhook=None if webhook is None else check_webhook(webhook, self.settings),
            graph=graph,
        )

    def _strategy(self, kwargs: dict[str, Any]) -> Strategy:
        """The call's `multitask_strategy` keyword (taken out: it is not the runnable's),
        else the instance's."""
        value = kwargs.pop("multitask_strategy", None)
        return self.multitask_strategy if value is None else check_strategy(value)

    def _call_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """Keyword arguments that travel as such: only for a referenced runnable."""
        if self.ref is None or not kwargs:
            return None
        try:
            json.dumps(kwargs)
            return check_call_kwargs(dict(kwargs))
        except (TypeError, ValueError, DisallowedObject) as exc:
            raise SerializationRefused(f"call keyword arguments cannot travel: {exc}") from exc

    # -- invoke -----------------------------------------------------------------------------

    def invoke(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Output:
        # Exported before LangChain patches the config for the child run (which drops run_name).
        remote = export_config(config)
        return self._call_with_config(self._invoke, input, config, _remote=remote, **kwargs)

    def _invoke(
        self,
        input: Input,
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> Output:
        client = client_for(self.settings)
        remote = kwargs.pop("_remote")
        strategy = self._strategy(kwargs)
        request = self._request("invoke", input, remote, kwargs, run_manager=run_manager)
        client.submit([request], strategy=strategy)
        outcome = client.outcome(request.run_id, timeout=self._wait)
        return cast(Output, unwrap(client.protocol, outcome))

    async def ainvoke(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Output:
        remote = export_config(config)
        return await self._acall_with_config(self._ainvoke, input, config, _remote=remote, **kwargs)

    async def _ainvoke(
        self,
        input: Input,
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> Output:
        client = async_client_for(self.settings)
        remote = kwargs.pop("_remote")
        strategy = self._strategy(kwargs)
        request = self._request("invoke", input, remote, kwargs, run_manager=run_manager)
        await client.submit([request], strategy=strategy)
        outcome = await client.outcome(request.run_id, timeout=self._wait)
        return cast(Output, unwrap(client.protocol, outcome))

    # -- stream -----------------------------------------------------------------------------

    def stream(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any | None
    ) -> Iterator[Output]:
        """Yield the bound runnable's output chunks as the worker produces them."""
        remote = export_config(config)
        yield from self._transform_stream_with_config(
            iter([input]), self._stream, config, _remote=remote, **kwargs
        )

    def _stream(
        self,
        inputs: Iterator[Input],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> Iterator[Output]:
        client = client_for(self.settings)
        remote = kwargs.pop("_remote")
        strategy = self._strategy(kwargs)
        request = self._request("stream", next(inputs), remote, kwargs, run_manager=run_manager)
        client.submit([request], strategy=strategy)
        for event in client.events([request.run_id], timeout=self._wait):
            if event.chunk is not None:
                yield cast(Output, client.protocol.data.decode_data(event.chunk))
            elif event.outcome is not None and event.outcome.state not in COMPLETED_STATES:
                raise error_for(event.outcome)

    async def astream(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any | None
    ) -> AsyncIterator[Output]:
        remote = export_config(config)

        async def one() -> AsyncIterator[Input]:
            yield input

        config = ensure_config(config)
        if not get_async_callback_manager_for_config(config).handlers:
            # Nothing observes it (no callbacks, tracer or `astream_events`): skip LangChain's
            # wrapper, a run nobody sees, 2 signature inspections, a task per chunk. Same chunks.
            no_one = AsyncCallbackManagerForChainRun.get_noop_manager()
            chunks = self._astream(one(), no_one, config, _remote=remote, **kwargs)
            async with aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
            return
        async for chunk in self._atransform_stream_with_config(
            one(), self._astream, config, _remote=remote, **kwargs
        ):
            yield chunk

    async def _astream(
        self,
        inputs: AsyncIterator[Input],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> AsyncGenerator[Output, None]:
        client = async_client_for(self.settings)
        remote = kwargs.pop("_remote")
        strategy = self._strategy(kwargs)
        payload = await anext(inputs)
        replayer = EventReplayer(run_manager) if wants_events(run_manager) else None
        request = self._request(
            "stream", payload, remote, kwargs, run_manager=run_manager, events=replayer is not None
        )
        await client.submit([request], strategy=strategy)
        try:
            async for event in client.events([request.run_id], timeout=self._wait):
                if event.chunk is not None:
                    yield cast(Output, client.protocol.data.decode_data(event.chunk))
                elif event.callback is not None and replayer is not None:
                    await replayer.replay(client.protocol.data.decode_data(event.callback))
                elif event.outcome is not None and event.outcome.state not in COMPLETED_STATES:
                    raise error_for(event.outcome)
        finally:
            if replayer is not None:
                await replayer.close()

    # -- fire and forget --------------------------------------------------------------------

    def submit(
        self,
        input: Input,
        config: RunnableConfig | None = None,
        *,
        stream: bool = False,
        multitask_strategy: Strategy | None = None,
        priority: str | None = None,
        webhook: str | None = None,
    ) -> RemoteRun:
        """Enqueue a run and return its handle at once (no waiting).

        Args:
            stream: publish output chunks as they are produced (for `RemoteRun.stream`).
            multitask_strategy: overrides the instance's, for a run on a thread.
            priority: this run's priority (default: the runnable's).
            webhook: an http(s) URL a worker POSTs the signed outcome to when the run ends
                (README, "Webhooks").

        Raises:
            SerializationRefused, PayloadTooLarge: before anything is enqueued.
            UnknownPriority, WebhookRefused: before anything is enqueued.
            BrokerUnavailable: Redis is unreachable; nothing was enqueued.
            ThreadBusy: strategy "reject" and the run's thread was busy; nothing enqueued.
        """
        mode: Mode = "stream" if stream else "invoke"
        strategy = self._strategy({"multitask_strategy": multitask_strategy})
        call = {} if priority is None else {"priority": priority}
        request = self._request(mode, input, export_config(config), call, webhook=webhook)
        client_for(self.settings).submit([request], strategy=strategy)
        return RemoteRun(request.run_id, self.settings, timeout=self.timeout)

    async def asubmit(
        self,
        input: Input,
        config: RunnableConfig | None = None,
        *,
        stream: bool = False,
        multitask_strategy: Strategy | None = None,
        priority: str | None = None,
        webhook: str | None = None,
    ) -> RemoteRun:
        """Like `submit`, without blocking the event loop."""
        mode: Mode = "stream" if stream else "invoke"
        strategy = self._strategy({"multitask_strategy": multitask_strategy})
        call = {} if priority is None else {"priority": priority}
        request = self._request(mode, input, export_config(config), call, webhook=webhook)
        await async_client_for(self.settings).submit([request], strategy=strategy)
        return RemoteRun(request.run_id, self.settings, timeout=self.timeout)


# LangChain inspects the function `_call_with_config` calls, on every call (`accepts_config`,
# `accepts_run_manager`): about 70 µs of each invoke measured here under load. A signature set
# on the function is read instead of rebuilt; it is the same signature.
for _method in (RunnableK8s._invoke, RunnableK8s._ainvoke):
    setattr(_method, "__signature__", inspect.signature(_method))  # noqa: B010
