"""Cluster-wide flow control at each model call: rate, token and concurrency limits per key,
and a 429 that pauses a key for every worker (README, "Flow control").

The parts, and why each is where it is:

- `FlowRateLimiter` is LangChain's `BaseRateLimiter`, set as `rate_limiter=` on every chat
  model of a runnable the worker loads (`attach`). LangChain awaits it right before each call
  (after the cache), so a chain with three model calls takes three requests' worth.
- `_Handler` is a callback handler added to every run's callbacks while the run executes
  (`FlowControl.run`, through LangChain's configure hook). `on_chat_model_start` opens the
  call (its tenant comes from the run's metadata); `on_llm_end` settles the tokens from the
  model's usage metadata and frees the concurrency slots; `on_llm_error` frees them too
  (errors, cancellation and the time limit all end there). A dead worker's slots lapse
  with their lease.
- Hooks on the OpenAI client's HTTP client see each 429 before the SDK retries it, pause the
  key cluster-wide, and make the SDK's retries wait for the pause and take a request slot.

The state and its scripts are in `runnable_k8s.store.limits`; waiting is `asyncio.sleep`
until the slot the script computed (a concurrency slot, freed at an unknown time, is polled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final
from uuid import UUID

import redis.asyncio as aredis
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.outputs import LLMResult
from langchain_core.rate_limiters import BaseRateLimiter
from langchain_core.tracers.context import register_configure_hook

from runnable_k8s.limits import Limit
from runnable_k8s.settings import Settings
from runnable_k8s.store.limits import LimitStore, Verdict
from runnable_k8s.worker.metrics import WorkerMetrics
from runnable_k8s.worker.model_calls import chat_models, input_size, tenant_of, tokens_of
from runnable_k8s.worker.ratelimit_headers import pause_seconds, status_of
from runnable_k8s.worker.waits import WaitRecords

logger = logging.getLogger("runnable_k8s.worker.flow")

_POLL: Final = 0.1
"""Seconds between tries for a concurrency slot (with jitter): when one frees is unknown."""


@dataclass(eq=False)
class _Call:
    """One model call: its share of the limits, taken in `aacquire`, freed at its end."""

    run_id: str | None
    tenant: str | None
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    keys: list[str] = field(default_factory=list)
    model_keys: tuple[str, ...] = ()
    size: int = 0
    """Characters of the call's input messages (scales its token estimate)."""
    retries: int = 0
    done: bool = False


_CALL: ContextVar[_Call | None] = ContextVar("runnable_k8s_flow_call", default=None)
_RUN: ContextVar[str | None] = ContextVar("runnable_k8s_flow_run", default=None)
_HANDLER: ContextVar[_Handler | None] = ContextVar("runnable_k8s_flow_handler", default=None)
register_configure_hook(_HANDLER, inheritable=True)


class FlowControl:
    """The worker's limiter: one per worker process, shared by all its runs."""

    def __init__(
        self,
        settings: Settings,
        client: Callable[[], aredis.Redis],
        metrics: WorkerMetrics,
        waits: WaitRecords,
    ) -> None:
        self.limits = settings.limits
        self._settings = settings
        self._client = client
        self._store: LimitStore | None = None
        self._metrics = metrics
        self._waits = waits
        self._handler = _Handler(self)
        self._held: dict[str, _Call] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._hooked: set[int] = set()
        self._open: dict[str, list[_Call]] = {}
        self._ending: set[asyncio.Task[None]] = set()

    @property
    def store(self) -> LimitStore:
        if self._store is None:
            self._store = LimitStore(
                self._client(),
                lease=self._settings.lease,
                margin=self._settings.limit_margin,
                poll=_POLL,
            )
        return self._store

    # -- wiring --------------------------------------------------------------------------------

    def attach(self, runnable: Any) -> None:
        """Set this worker's limiter on every chat model inside `runnable` (found through its
        pydantic fields: sequences, parallels, bindings). Models hidden in code (a graph
        node's closure) are not found; give them `rate_limiter=` in the registered code."""
        if not self.limits:
            return
        for model in chat_models(runnable):
            params = model._get_ls_params()
            provider = str(params.get("ls_provider") or "")
            name = str(params.get("ls_model_name") or "")
            keys = tuple(k for k in (provider, f"{provider}:{name}" if name else "") if k)
            model.rate_limiter = FlowRateLimiter(self, keys)
            self._hook_http(model)

    @contextlib.contextmanager
    def run(self, run_id: str) -> Iterator[None]:
        """While a run executes: its model calls report to this worker's handler."""
        if not self.limits:
            yield
            return
        run_token = _RUN.set(run_id)
        handler_token = _HANDLER.set(self._handler)
        try:
            yield
        finally:
            _HANDLER.reset(handler_token)
            _RUN.reset(run_token)
            self._end_run(run_id)

    def _end_run(self, run_id: str) -> None:
        # A cancelled or timed-out call may never reach `on_llm_error` (LangChain's `agenerate`
        # lets the CancelledError through without it): its slots are freed here, or the
        # renewer would keep them for as long as the worker lives.
        self._handler.forget(run_id)
        for call in self._open.pop(run_id, []):
            if not call.done:
                task = asyncio.get_running_loop().create_task(self._release_quietly(call))
                self._ending.add(task)
                task.add_done_callback(self._ending.discard)

    async def _release_quietly(self, call: _Call) -> None:
        try:
            await self.release(call, None)
        except Exception as exc:  # Redis away: the lease lapses instead
            logger.warning("cannot free limit slots of run=%s: %s", call.run_id, exc)

    def _hook_http(self, model: BaseChatModel) -> None:
        client = getattr(getattr(model, "root_async_client", None), "_client", None)
        hooks = getattr(client, "event_hooks", None)
        if not isinstance(hooks, dict) or id(client) in self._hooked:
            return
        self._hooked.add(id(client))
        # The SDK's default client is shared by models: the hooks act on the current call.
        hooks.setdefault("request", []).append(self._on_request)
        hooks.setdefault("response", []).append(self._on_response)

    async def _on_request(self, request: Any) -> None:
        call = _CALL.get()
        if (
            call is None
            or not call.keys
            or request.headers.get("x-stainless-retry-count")
            in (
                None,
                "0",
            )
        ):
            return
        # The SDK retries on its own: each retry waits out pauses and spends a request.
        call.retries += 1
        retry = _Call(call.run_id, call.tenant, f"{call.call_id}:{call.retries}")
        await self.acquire(retry, call.model_keys, requests_only=True)

    async def _on_response(self, response: Any) -> None:
        call = _CALL.get()
        if call is not None and call.keys and response.status_code == 429:
            await self.pause(call, pause_seconds(response.headers))

    # -- the limits ----------------------------------------------------------------------------

    def rules(self, call: _Call, model_keys: tuple[str, ...]) -> list[tuple[str, Limit]]:
        """The (concrete key, limit) pairs that apply to a call of a model with these keys."""
        candidates = list(model_keys)
        if call.tenant is not None:
            candidates.append(f"tenant:{call.tenant}")
        found: list[tuple[str, Limit]] = []
        for key in candidates:
            exact = [limit for limit in self.limits if limit.key == key]
            pattern = [limit for limit in self.limits if limit.matches(key)]
            if exact or pattern:
                found.append((key, (exact or pattern)[0]))
        return found

    async def acquire(
        self, call: _Call, model_keys: tuple[str, ...], *, requests_only: bool = False
    ) -> None:
        """Wait until every limit that applies grants the call its share."""
        rules = self.rules(call, model_keys)
        if requests_only:
            rules = [(key, Limit(limit.key, requests=limit.requests)) for key, limit in rules]
        if not rules:
            return
        call.model_keys = model_keys
        waited: Verdict | None = None
        started = time.monotonic()
        try:
            while True:
                verdict = await self.store.acquire(call.call_id, rules, size=call.size)
                if verdict.wait == 0:
                    break
                if waited is None or (verdict.reason, verdict.key) != (waited.reason, waited.key):
                    await self._waiting(call, verdict, rules, waited)
                    waited = verdict
                delay = verdict.wait
                if verdict.reason == "concurrency":
                    delay *= random.uniform(0.5, 1.5)  # waiters on many workers spread out
                await asyncio.sleep(delay)
        finally:
            if waited is not None:
                await self._waited(call, waited, rules, time.monotonic() - started)
        if not requests_only:
            call.keys = [key for key, _ in rules]
            if call.run_id is not None:
                self._open.setdefault(call.run_id, []).append(call)
            if any(limit.concurrency for _, limit in rules):
                self._held[call.call_id] = call
                self._start_renewer()

    async def release(self, call: _Call, tokens: int | None) -> None:
        """The call ended (success, error, cancellation or time limit)."""
        if call.done or not call.keys:
            return
        call.done = True
        self._held.pop(call.call_id, None)
        calls = self._open.get(call.run_id or "", [])
        if call in calls:
            calls.remove(call)
        await self.store.release(call.call_id, call.keys, tokens, size=call.size)

    async def pause(self, call: _Call, seconds: float) -> None:
        """A 429: every worker leaves the call's model keys alone for `seconds`."""
        seconds = min(seconds, self._settings.time_limit)
        for key in call.model_keys:
            for rule_key, limit in self.rules(_Call(None, None), (key,)):
                await self.store.pause(rule_key, seconds)
                self._metrics.limit_pauses.labels(limit.key).inc()
        logger.warning(
            "429 from the provider: paused keys=%s for %.1fs run=%s",
            ",".join(call.model_keys),
            seconds,
            call.run_id,
        )

    async def _waiting(
        self,
        call: _Call,
        verdict: Verdict,
        rules: list[tuple[str, Limit]],
        before: Verdict | None,
    ) -> None:
        if before is not None:
            self._metrics.limit_waiting.labels(_rule(rules, before.key), before.reason).dec()
        self._metrics.limit_waiting.labels(_rule(rules, verdict.key), verdict.reason).inc()
        logger.info(
            "waiting on limit run=%s key=%s reason=%s for=%.2fs",
            call.run_id,
            verdict.key,
            verdict.reason,
            verdict.wait,
        )
        if call.run_id is not None:
            await self._waits.waiting(call.run_id, verdict.key, verdict.reason, verdict.wait)

    async def _waited(
        self, call: _Call, verdict: Verdict, rules: list[tuple[str, Limit]], seconds: float
    ) -> None:
        label = _rule(rules, verdict.key)
        self._metrics.limit_waiting.labels(label, verdict.reason).dec()
        self._metrics.limit_wait_seconds.labels(label, verdict.reason).inc(seconds)
        if call.run_id is not None:
            await self._waits.done(call.run_id)

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        # One script call renews every slot this worker holds, a third of a lease apart.
        while self._held:
            await asyncio.sleep(self._settings.lease / 3)
            held = [(c.call_id, k) for c in list(self._held.values()) for k in c.keys]
            try:
                await self.store.renew(held)
            except Exception as exc:  # a Redis blip: the next round renews, or leases lapse
                logger.warning("cannot renew limit leases: %s", exc)


def _rule(rules: list[tuple[str, Limit]], key: str) -> str:
    return next((limit.key for k, limit in rules if k == key), key)


class FlowRateLimiter(BaseRateLimiter):
    """LangChain's hook before each model call, backed by the cluster-wide limits."""

    def __init__(self, flow: FlowControl, model_keys: tuple[str, ...]) -> None:
        self._flow = flow
        self.model_keys = model_keys
        self._loop: asyncio.AbstractEventLoop | None = None

    async def aacquire(self, *, blocking: bool = True) -> bool:
        call = _CALL.get()
        if call is None:  # a model called outside a run's callbacks: count it, free nothing
            call = _Call(_RUN.get(), None)
        self._loop = asyncio.get_running_loop()
        await self._flow.acquire(call, self.model_keys)
        return True

    def acquire(self, *, blocking: bool = True) -> bool:
        # A sync `invoke` inside a run (e.g. in a lambda) runs on a pool thread: wait there
        # for the loop's answer; the event loop itself never blocks.
        loop = self._loop
        if loop is None or not loop.is_running():
            return True
        try:
            asyncio.get_running_loop()
            return True  # never block the loop's own thread
        except RuntimeError:
            pass
        return asyncio.run_coroutine_threadsafe(self.aacquire(), loop).result()


class _Handler(AsyncCallbackHandler):
    """Opens, settles and ends model calls. Inline: it sets the call's context variable in
    the task that then calls the model, before LangChain awaits the rate limiter."""

    run_inline = True

    def __init__(self, flow: FlowControl) -> None:
        self._flow = flow
        self._calls: dict[UUID, _Call] = {}

    def forget(self, run_id: str) -> None:
        """Drop the calls of a run that ended without their end event."""
        for llm_run, call in list(self._calls.items()):
            if call.run_id == run_id:
                del self._calls[llm_run]

    async def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        tenant = (metadata or {}).get("tenant")
        call = _Call(_RUN.get(), tenant_of(tenant), size=input_size(messages))
        self._calls[run_id] = call
        _CALL.set(call)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._calls.pop(run_id, None)
        if call is not None:
            await self._flow.release(call, tokens_of(response))

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._calls.pop(run_id, None)
        if call is None:
            return
        if status_of(error) == 429 and call.keys:
            headers = getattr(getattr(error, "response", None), "headers", None) or {}
            await self._flow.pause(call, pause_seconds(headers))
            await self._flow.release(call, 0)  # refused: no tokens spent
        else:
            await self._flow.release(call, None)
