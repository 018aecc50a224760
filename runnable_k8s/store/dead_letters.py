"""The dead-letter index's Redis side. The worker writes it (lua/finish.lua, for a run that
ends in one of `DEAD_LETTER_STATES`); producer/dead_letters.py reads it through `DeadLetterIndex`
and verifies every record it returns: the index is only a list of run ids."""

from __future__ import annotations

from typing import Any, Final

import redis

from runnable_k8s.store import keys

# Cancelled runs are not dead letters: someone chose to end them.
DEAD_LETTER_STATES: Final = frozenset({"failed", "expired"})


class DeadLetterIndex:
    """The index of one queue, on a synchronous client (raises redis-py's errors)."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self._client = client
        self._index = keys.dead_letters(queue)

    def newest(self, *, since: float, limit: int) -> list[tuple[str, Any]]:
        """Drop entries older than `since`; then the newest `limit` run ids, newest first,
        each with its status record (unverified bytes, None if expired)."""
        self._client.zremrangebyscore(self._index, "-inf", f"({since!r}")
        ids: list[Any] = list(self._client.zrevrange(self._index, 0, max(0, limit - 1)))
        with self._client.pipeline(transaction=False) as pipe:
            for raw_id in ids:
                pipe.get(keys.status(raw_id.decode()))
            raws = pipe.execute()
        return [(i.decode(errors="replace"), raw) for i, raw in zip(ids, raws, strict=True)]

    def forget(self, run_ids: list[str]) -> None:
        if run_ids:
            self._client.zrem(self._index, *run_ids)

    def indexed(self, run_id: str) -> bool:
        return self._client.zscore(self._index, run_id) is not None

    def status(self, run_id: str) -> Any:
        return self._client.get(keys.status(run_id))

    def last_events(self, run_id: str, count: int) -> Any:
        """The newest `count` entries of the run's event stream, newest first."""
        return self._client.xrevrange(keys.events(run_id), count=count)

    def retry_link(self, run_id: str) -> Any:
        return self._client.get(keys.retry_of(run_id))

    def kept(self, run_id: str) -> tuple[Any, Any]:
        """The dead letter's kept message copy and body (unverified bytes or None)."""
        copy, body = self._client.mget(keys.kept_request(run_id), keys.kept_body(run_id))
        return copy, body

    def purge(self, older_than: float | None) -> int:
        """Remove entries that ended before `older_than` (a time; None: all) and their kept
        requests. Returns how many were removed."""
        top = "+inf" if older_than is None else repr(older_than)
        ids: list[Any] = list(self._client.zrangebyscore(self._index, "-inf", top))
        if not ids:
            return 0
        with self._client.pipeline(transaction=True) as pipe:
            pipe.zrem(self._index, *ids)
            for raw_id in ids:
                run_id = raw_id.decode(errors="replace")
                pipe.delete(keys.kept_request(run_id), keys.kept_body(run_id))
            removed = pipe.execute()[0]
        return int(removed)


def retry_link_record(run_id: str, sealed: bytes, ttl: int) -> tuple[str, bytes, int]:
    """The record linking a retry `run_id` to the run it retries, for `Submission`."""
    return keys.retry_of(run_id), sealed, ttl
