"""`RemoteRun`: a handle on a submitted run, rebuildable from its id in any process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from runnable_k8s.errors import UnknownEventId
from runnable_k8s.producer.aclient import async_client_for
from runnable_k8s.producer.client import client_for
from runnable_k8s.producer.results import error_for, unwrap
from runnable_k8s.producer.stream_entries import Event
from runnable_k8s.protocol.messages import COMPLETED_STATES, Protocol, RunStatus
from runnable_k8s.protocol.webhook import WebhookDelivery
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

    def webhook(self) -> WebhookDelivery | None:
        """Where the run's completion webhook stands (state, attempts, last error), or None
        for a run submitted without one.

        Raises:
            SignatureRejected: the record was tampered with.
        """
        return client_for(self.settings).webhook(self.id)

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
        return unwrap(client.protocol, client.outcome(self.id, timeout=self._wait(timeout)))

    def stream(
        self,
        timeout: float | None = None,
        *,
        after: str | int | None = None,
        with_ids: bool = False,
    ) -> Iterator[Any]:
        """Yield output chunks from the start of the run's stream, as they arrive; with
        `with_ids=True`, `(event_id, chunk)` pairs. `after=event_id` yields only the chunks
        after that one (a reader that stopped continues there, with no gap and no repeat).

        A run submitted without `stream=True` yields its whole output as one chunk.

        Raises:
            UnknownEventId: `after` is not an event id, or lies beyond the stream's end.
        """
        client = client_for(self.settings)
        reader = _Reader(client.protocol, self.id, after)
        client.status(self.id)
        for event in client.events([self.id], timeout=self._wait(timeout)):
            for event_id, chunk in reader.take(event):
                yield (event_id, chunk) if with_ids else chunk

    def thread_position(self) -> int | None:
        """For a run on a LangGraph thread: 0 while it holds its thread (queued or running),
        n >= 1 while it is n-th in the thread's line; None otherwise (no thread, or done)."""
        return client_for(self.settings).thread_position(self.id)

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
        outcome = await client.outcome(self.id, timeout=self._wait(timeout))
        return unwrap(client.protocol, outcome)

    async def astream(
        self,
        timeout: float | None = None,
        *,
        after: str | int | None = None,
        with_ids: bool = False,
    ) -> AsyncIterator[Any]:
        """Like `stream`, awaiting without holding a thread."""
        client = async_client_for(self.settings)
        reader = _Reader(client.protocol, self.id, after)
        await client.status(self.id)
        async for event in client.events([self.id], timeout=self._wait(timeout)):
            for event_id, chunk in reader.take(event):
                yield (event_id, chunk) if with_ids else chunk

    async def acancel(self) -> RunStatus:
        return await async_client_for(self.settings).cancel(self.id)


def _position(run_id: str, after: str | int | None) -> int:
    """The signed sequence number `after` names (-1: from the start)."""
    if after is None:
        return -1
    text = str(after)
    # isdigit() alone accepts "²" and other digits int() refuses.
    if isinstance(after, bool) or not (text.isascii() and text.isdigit()):
        raise UnknownEventId(
            f"{after!r} is not an event id of run {run_id}'s stream "
            "(ids are the non-negative integers `stream(with_ids=True)` yields)",
            run_id=run_id,
        )
    return int(text)


class _Reader:
    """What a run's stream gives one reader, shared by `stream` and `astream`.

    An event id is the chunk's sequence number, which the worker signs with the chunk (with
    the run id and the entry's kind). Resuming reads the stream from its first entry anyway
    and verifies every entry, so the chunks after `after` are exactly those whose signed
    position follows it: a Redis entry id is not signed, and a cursor built from one could be
    pointed past entries without anything noticing.
    """

    def __init__(self, protocol: Protocol, run_id: str, after: str | int | None) -> None:
        self._protocol = protocol
        self._run_id = run_id
        self._after = _position(run_id, after)
        self._streamed = False

    def take(self, event: Event) -> list[tuple[str, Any]]:
        """The (id, chunk) pairs of one event: its chunk if it lies after the resume point;
        at the end, the whole output if the run streamed nothing (it was not submitted with
        `stream=True`; its id is the stream's length); or the run's error."""
        if event.chunk is not None and event.seq is not None:
            self._streamed = True
            if event.seq <= self._after:
                return []
            return [(str(event.seq), self._protocol.data.decode_data(event.chunk))]
        outcome = event.outcome
        if outcome is None:
            return []
        if outcome.state not in COMPLETED_STATES:
            raise error_for(outcome)
        # `outcome.chunks` counts the stream's signed entries: the last one's id is one less.
        last = outcome.chunks - 1 if self._streamed else outcome.chunks
        if self._after > last:
            raise UnknownEventId(
                f"event id {self._after} is beyond the end of run {self._run_id}'s stream "
                f"(its last id is {last})",
                run_id=self._run_id,
            )
        if self._streamed or self._after == last:
            return []
        return [(str(last), unwrap(self._protocol, outcome))]
