"""`RemoteRun`: a handle on a submitted run, rebuildable from its id in any process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from runnable_k8s.errors import RunnableK8sError
from runnable_k8s.producer.client import Event, async_client_for, client_for
from runnable_k8s.producer.results import error_for, unwrap
from runnable_k8s.protocol.messages import COMPLETED_STATES, Protocol, RunStatus
from runnable_k8s.settings import Settings


class RemoteRun:
    """A run submitted with `RunnableK8s.submit` (or rebuilt with `RemoteRun.attach(id)`).

    Results, statuses and streams are kept for `RUNNABLE_K8S_RESULT_TTL` seconds after the run
    ends; after that the id is unknown (`RunNotFound`).
    """

    def __init__(self, run_id: str, settings: Settings, *, timeout: float | None = None) -> None:
        self.id = run_id
        self.settings = settings
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"RemoteRun({self.id!r})"

    @classmethod
    def attach(cls, run_id: str, settings: Settings | None = None) -> RemoteRun:
        """Rebuild a handle from an id, checking that the run exists.

        Raises:
            RunNotFound: unknown or expired id.
        """
        settings = settings if settings is not None else Settings.from_env()
        client_for(settings).status(run_id)
        return cls(run_id, settings)

    def _wait(self, timeout: float | None) -> float:
        if timeout is not None:
            return timeout
        return self.timeout if self.timeout is not None else self.settings.wait_timeout

    # -- sync -------------------------------------------------------------------------------

    def status(self) -> RunStatus:
        """State (queued, running, retrying, succeeded, interrupted, failed, cancelled, expired),
        attempt and timestamps. Raises `RunNotFound` for an unknown or expired id. A queued run that
        no worker could verify, and that nothing can still run, is recorded as failed first
        (its reason says the signing keys probably differ)."""
        return client_for(self.settings).status(self.id)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the output.

        Raises:
            RunNotFound: unknown or expired id (checked first: never a hang).
            WaitTimeout: not finished within `timeout` (the run goes on).
            RemoteError, RunCancelled, RunExpired, ExecutionTimeout, RunRejected: how it ended.
            SigningKeyMismatch: no worker could verify it (the signing keys probably differ).
        """
        client = client_for(self.settings)
        client.status(self.id)
        for event in client.events([self.id], timeout=self._wait(timeout)):
            if event.outcome is not None:
                return unwrap(client.protocol, event.outcome)
        raise RunnableK8sError(f"run {self.id} ended without an outcome")

    def stream(self, timeout: float | None = None) -> Iterator[Any]:
        """Yield output chunks from the start of the run's stream, as they arrive.

        A run submitted without `stream=True` yields its whole output as one chunk.
        """
        client = client_for(self.settings)
        client.status(self.id)
        streamed = False
        for event in client.events([self.id], timeout=self._wait(timeout)):
            yield from _chunks(client.protocol, event, streamed)
            streamed = streamed or event.chunk is not None

    def cancel(self) -> RunStatus:
        """Cancel the run. Queued: it never starts. Running: its worker cancels it within about
        a second. Finished: nothing happens. Returns the status it had."""
        return client_for(self.settings).cancel(self.id)

    # -- async ------------------------------------------------------------------------------

    async def astatus(self) -> RunStatus:
        return await async_client_for(self.settings).status(self.id)

    async def aresult(self, timeout: float | None = None) -> Any:
        """Like `result`, awaiting without holding a thread."""
        client = async_client_for(self.settings)
        await client.status(self.id)
        async for event in client.events([self.id], timeout=self._wait(timeout)):
            if event.outcome is not None:
                return unwrap(client.protocol, event.outcome)
        raise RunnableK8sError(f"run {self.id} ended without an outcome")

    async def astream(self, timeout: float | None = None) -> AsyncIterator[Any]:
        client = async_client_for(self.settings)
        await client.status(self.id)
        streamed = False
        async for event in client.events([self.id], timeout=self._wait(timeout)):
            for chunk in _chunks(client.protocol, event, streamed):
                yield chunk
            streamed = streamed or event.chunk is not None

    async def acancel(self) -> RunStatus:
        return await async_client_for(self.settings).cancel(self.id)


def _chunks(protocol: Protocol, event: Event, streamed: bool) -> list[Any]:
    """What one stream event gives a reader: its chunk; at the end, the whole output if the
    run streamed nothing (it was not submitted with `stream=True`); or the run's error."""
    if event.chunk is not None:
        return [protocol.data.decode_data(event.chunk)]
    if event.outcome is None:
        return []
    if event.outcome.state not in COMPLETED_STATES:
        raise error_for(event.outcome)
    return [] if streamed else [unwrap(protocol, event.outcome)]
