"""The sides the benchmark compares, each calling the same chains its own way: RunnableK8s,
plain Celery (W1 to W4), LangServe (W1 and streaming, over HTTP to one uvicorn process) and
the chain itself in this process (W1 and streaming: what no remote call can beat)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any, ClassVar, TypeVar

from benchmarks.processes import AnyWorker
from benchmarks.sizes import Sizes

T = TypeVar("T")


class Side:
    name: ClassVar[str]
    label: ClassVar[str]
    batches: ClassVar[bool] = False
    """Runs W2 to W4 (RunnableK8s and plain Celery)."""
    streams: ClassVar[bool] = False
    """Runs the streaming workloads (RunnableK8s, LangServe, in-process)."""
    uses_redis: ClassVar[bool] = False
    """Its Redis commands are counted (RunnableK8s and plain Celery)."""
    worker: AnyWorker | None = None
    """The process that does the work (in-process: none)."""

    def __init__(self) -> None:
        # One long-lived event loop, as an async application has (its connection pools stay).
        self.loop = asyncio.new_event_loop()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def invoke_chain(self, payload: dict[str, str]) -> str:
        raise NotImplementedError

    def batch_chain(self, payloads: list[dict[str, str]]) -> list[str]:
        raise NotImplementedError

    def batch_slow(self, payloads: list[dict[str, str]]) -> list[str]:
        raise NotImplementedError

    def echo(self, payload: str) -> str:
        raise NotImplementedError

    def astream_tokens(self, tokens: int, payload: dict[str, str]) -> AsyncIterator[str]:
        """The chunks of `token_chain(tokens)` on `payload`, as they arrive."""
        raise NotImplementedError

    def close(self) -> None:
        # Streams a workload stopped early (on a wrong answer) still hold async generators.
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


class Ours(Side):
    name = "ours"
    label = "RunnableK8s"
    batches = True
    streams = True
    uses_redis = True

    def __init__(self, settings: Any, sizes: Sizes, worker: AnyWorker) -> None:
        from benchmarks.models import EchoRunnable, small_chain
        from runnable_k8s import RunnableK8s

        super().__init__()
        self.settings = settings
        self.worker = worker
        self.chain = RunnableK8s(bound=small_chain(), settings=settings)
        self.slow = RunnableK8s(bound=small_chain(sizes.w3_delay), settings=settings)
        self.echo_runnable = RunnableK8s(bound=EchoRunnable(), settings=settings)
        self._token_chains: dict[tuple[int, float], Any] = {}

    def invoke_chain(self, payload: dict[str, str]) -> str:
        return self.chain.invoke(payload)

    def batch_chain(self, payloads: list[dict[str, str]]) -> list[str]:
        return self.chain.batch(payloads)

    def batch_slow(self, payloads: list[dict[str, str]]) -> list[str]:
        return self.run(self.slow.abatch(payloads))

    def echo(self, payload: str) -> str:
        return self.echo_runnable.invoke(payload)

    def token_chain(self, tokens: int, delay: float = 0.0, settings: Any = None) -> Any:
        from benchmarks.models import token_chain
        from runnable_k8s import RunnableK8s

        if settings is not None:
            return RunnableK8s(bound=token_chain(tokens, delay), settings=settings)
        if (tokens, delay) not in self._token_chains:
            self._token_chains[tokens, delay] = RunnableK8s(
                bound=token_chain(tokens, delay), settings=self.settings
            )
        return self._token_chains[tokens, delay]

    def astream_tokens(self, tokens: int, payload: dict[str, str]) -> AsyncIterator[str]:
        return self.token_chain(tokens).astream(payload)  # type: ignore[no-any-return]


class Baseline(Side):
    name = "baseline"
    label = "plain Celery"
    batches = True
    uses_redis = True

    def __init__(self, redis_url: str, queue: str, sizes: Sizes, worker: AnyWorker) -> None:
        from benchmarks import baseline

        super().__init__()
        self.worker = worker
        self.app = baseline.app
        self.app.conf.update(
            broker_url=redis_url, result_backend=redis_url, task_default_queue=queue
        )
        self.queue = queue
        self.delay = sizes.w3_delay
        self.timeout = 600.0

    def invoke_chain(self, payload: dict[str, str]) -> str:
        from benchmarks.baseline import run_chain

        return run_chain.apply_async((payload,), queue=self.queue).get(timeout=self.timeout)  # type: ignore[no-any-return]

    def _many(self, payloads: list[dict[str, str]], delay: float) -> list[str]:
        # `delay` each, then `.get()` each: on Celery 5.7 this is never slower than
        # `group(...).apply_async().get()`, whose result drain adds a ~0.5 s floor (its
        # default polling interval) that would make the baseline look worse than it is.
        from benchmarks.baseline import run_chain

        sent = [run_chain.apply_async((p, delay), queue=self.queue) for p in payloads]
        return [result.get(timeout=self.timeout) for result in sent]

    def batch_chain(self, payloads: list[dict[str, str]]) -> list[str]:
        return self._many(payloads, 0.0)

    def batch_slow(self, payloads: list[dict[str, str]]) -> list[str]:
        return self._many(payloads, self.delay)

    def echo(self, payload: str) -> str:
        from benchmarks.baseline import echo

        return echo.apply_async((payload,), queue=self.queue).get(timeout=self.timeout)  # type: ignore[no-any-return]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.app.close()
        super().close()


class LangServe(Side):
    """LangServe's `RemoteRunnable` against one uvicorn process serving the same chains."""

    name = "langserve"
    label = "LangServe"
    streams = True

    def __init__(self, url: str, worker: AnyWorker) -> None:
        from langserve import RemoteRunnable

        super().__init__()
        self.worker = worker
        self.url = url
        self.chain = RemoteRunnable(f"{url}/chain/", timeout=600.0)
        self._token_chains: dict[int, Any] = {}

    def invoke_chain(self, payload: dict[str, str]) -> str:
        return self.chain.invoke(payload)  # type: ignore[no-any-return]

    def astream_tokens(self, tokens: int, payload: dict[str, str]) -> AsyncIterator[str]:
        from langserve import RemoteRunnable

        if tokens not in self._token_chains:
            self._token_chains[tokens] = RemoteRunnable(
                f"{self.url}/tokens{tokens}/", timeout=600.0
            )
        return self._token_chains[tokens].astream(payload)  # type: ignore[no-any-return]


class InProcess(Side):
    """The chain itself, in the benchmark's process: no queue, no network."""

    name = "inprocess"
    label = "in-process"
    streams = True

    def __init__(self) -> None:
        from benchmarks.models import small_chain

        super().__init__()
        self.chain = small_chain()
        self._token_chains: dict[int, Any] = {}

    def invoke_chain(self, payload: dict[str, str]) -> str:
        return self.chain.invoke(payload)

    def astream_tokens(self, tokens: int, payload: dict[str, str]) -> AsyncIterator[str]:
        from benchmarks.models import token_chain

        if tokens not in self._token_chains:
            self._token_chains[tokens] = token_chain(tokens)
        return self._token_chains[tokens].astream(payload)  # type: ignore[no-any-return]
