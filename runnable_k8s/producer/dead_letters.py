"""Dead letters: runs that failed after their last attempt, were refused after verification,
or expired, kept for `dead_letter_ttl` seconds to be inspected and retried.

The worker indexes them (store/records.py `finish`); this module reads that index
(store/dead_letters.py), which is
only a list of run ids: everything shown is the run's signed status and outcome, and a retry
re-submits the run's own signed request, verified again, under a new run id. Nothing in the
index is trusted: an entry whose records are gone is dropped, one whose signed status says
the run did not fail is refused (a forged entry cannot make a good run look failed).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any, Final

from runnable_k8s import connections
from runnable_k8s.errors import MessageRejected, RunNotFound, SignatureRejected
from runnable_k8s.producer.client import client_for, new_run_id
from runnable_k8s.producer.redis_errors import translated
from runnable_k8s.protocol import envelope as env
from runnable_k8s.protocol import stream, task_message
from runnable_k8s.protocol.messages import Outcome, Protocol, RunStatus
from runnable_k8s.settings import Settings
from runnable_k8s.store.dead_letters import DEAD_LETTER_STATES, DeadLetterIndex, retry_link_record

STATES: Final = DEAD_LETTER_STATES
_FAR_FUTURE: Final = 4102444800.0  # links expire by Redis TTL, like statuses


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A verified dead letter: its signed status, its outcome when still readable, and the
    run it retries (if it was made by `retry`)."""

    status: RunStatus
    outcome: Outcome | None = None
    retry_of: str | None = None


@dataclass(frozen=True, slots=True)
class Listing:
    letters: list[DeadLetter]
    dropped: int
    """Entries whose records had expired, removed from the index."""
    refused: int
    """Entries whose status is unverifiable or says the run did not fail (forged)."""


def seal_link(protocol: Protocol, run_id: str, retry_of: str) -> bytes:
    body = json.dumps({"retry_of": retry_of}, separators=(",", ":")).encode()
    return protocol.signer.seal(env.Envelope(env.RETRY_LINK, run_id, _FAR_FUTURE, body))


def open_link(protocol: Protocol, wire: bytes, run_id: str) -> str:
    envelope = protocol.signer.open(wire, kind=env.RETRY_LINK)
    if envelope.run_id != run_id:
        raise SignatureRejected(f"retry link belongs to run {envelope.run_id}, not {run_id}")
    try:
        retry_of = json.loads(envelope.body)["retry_of"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureRejected("malformed retry link") from exc
    if not isinstance(retry_of, str):
        raise SignatureRejected("malformed retry link")
    return retry_of


class DeadLetters:
    """The dead-letter index of `settings.queue` (synchronous; for the CLI and scripts)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client = client_for(settings)
        self.protocol = self._client.protocol
        self._redis = connections.sync_client(
            settings.require_redis_url(), socket_connect_timeout=5, socket_timeout=30
        )
        self._index = DeadLetterIndex(self._redis, settings.queue)

    def close(self) -> None:
        self._redis.close()

    def retry_of(self, run_id: str) -> str | None:
        """The run `run_id` retries, from its signed link (None: not a retry).

        Raises:
            SignatureRejected: a link is there but is not one this key signed for this run.
        """
        raw = self._call(lambda: self._index.retry_link(run_id))
        return open_link(self.protocol, raw, run_id) if isinstance(raw, bytes) else None

    def listing(self, *, limit: int = 100) -> Listing:
        """The newest `limit` dead letters, newest first; entries past the period or whose
        records expired are removed from the index."""
        horizon = time.time() - self.settings.dead_letter_ttl

        found = self._call(lambda: self._index.newest(since=horizon, limit=limit))
        letters: list[DeadLetter] = []
        gone: list[str] = []
        refused = 0
        for run_id, raw in found:
            if not isinstance(raw, bytes):
                gone.append(run_id)
                continue
            try:
                status = self.protocol.open_status(raw, run_id)
            except MessageRejected:
                refused += 1
                continue
            if status.state not in STATES:
                refused += 1
                continue
            letters.append(DeadLetter(status))
        if gone:
            self._call(lambda: self._index.forget(gone))
        return Listing(letters, len(gone), refused)

    def show(self, run_id: str) -> DeadLetter:
        """A dead letter's verified status, outcome and retry link.

        Raises:
            RunNotFound: not in the index, or its records expired.
            SignatureRejected: its status, outcome or link is not signed for this run, or its
                signed status says the run did not fail (a forged index entry).
        """
        if not self._call(lambda: self._index.indexed(run_id)):
            raise RunNotFound(f"run {run_id} is not a dead letter (or no longer)", run_id=run_id)
        raw = self._call(lambda: self._index.status(run_id))
        if not isinstance(raw, bytes):
            raise RunNotFound(f"the records of run {run_id} expired", run_id=run_id)
        try:
            status = self.protocol.open_status(raw, run_id)
        except MessageRejected as exc:
            raise SignatureRejected(
                f"refused dead letter {run_id}: its status record is not signed: {exc}"
            ) from exc
        if status.state not in STATES:
            raise SignatureRejected(
                f"refused dead letter {run_id}: its signed status says {status.state} "
                "(the index entry is forged)"
            )
        return DeadLetter(status, self._outcome(run_id), self.retry_of(run_id))

    def _outcome(self, run_id: str) -> Outcome | None:
        entries = self._call(lambda: self._index.last_events(run_id, 8))
        for _, fields in entries or []:
            if stream.entry_kind(fields) == stream.EntryKind.OUTCOME.wire:
                try:
                    return self.protocol.open_outcome(stream.entry_message(fields), run_id)
                except MessageRejected as exc:
                    raise SignatureRejected(
                        f"refused dead letter {run_id}: its outcome is not signed: {exc}"
                    ) from exc
        return None

    def retry(self, run_id: str) -> str:
        """Submit the dead letter's own signed request again under a new run id, linked (in
        signed data) to `run_id`. Returns the new run id.

        Raises:
            RunNotFound: not a dead letter, or its request is no longer kept.
            SignatureRejected: the dead letter or its stored request fails verification, or
                the request is another run's.
        """
        self.show(run_id)
        copy, body = self._call(lambda: self._index.kept(run_id))
        if not isinstance(copy, bytes):
            raise RunNotFound(f"the request of run {run_id} is no longer kept", run_id=run_id)
        found = task_message.argument_of(copy)
        if found is None:
            raise SignatureRejected(f"refused retry of {run_id}: its stored request is malformed")
        try:
            request = self.protocol.open_request(
                found[0].encode(),
                beside=body if isinstance(body, bytes) else None,
                check_expiry=False,
            )
        except MessageRejected as exc:
            raise SignatureRejected(
                f"refused retry of {run_id}: its stored request fails verification: {exc}"
            ) from exc
        if request.run_id != run_id:
            raise SignatureRejected(
                f"refused retry of {run_id}: its stored request is run {request.run_id}'s"
            )
        new_id = new_run_id()
        again = dataclasses.replace(
            request,
            run_id=new_id,
            expires_at=time.time() + self.settings.run_expiry,
            queued_digest=None,
            created_at=None,
        )
        link = retry_link_record(
            new_id, seal_link(self.protocol, new_id, run_id), int(self.settings.result_ttl)
        )
        self._client.submit([again], records=[link])
        return new_id

    def purge(self, *, older_than: float | None = None) -> int:
        """Remove entries (all, or those that ended more than `older_than` seconds ago) and
        their kept requests. Returns how many were removed."""
        since = None if older_than is None else time.time() - older_than
        return int(self._call(lambda: self._index.purge(since)))

    @translated("cannot read dead letters from Redis")
    def _call(self, operation: Any) -> Any:
        return operation()
