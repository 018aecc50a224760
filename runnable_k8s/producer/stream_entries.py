"""Reading a run's event stream: XREAD replies into verified events, in order.

Every signed entry is a batch of items (protocol/stream.py); each item becomes one `Event`
with its own signed position, so a reader sees each chunk as the runnable produced it,
whether the worker published it alone or together with others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from runnable_k8s.errors import SignatureRejected
from runnable_k8s.protocol import stream
from runnable_k8s.protocol.messages import Outcome, Protocol

if TYPE_CHECKING:
    from runnable_k8s.producer import rejections


@dataclass(frozen=True, slots=True)
class Event:
    """One item of a run's event stream: an output chunk (encoded data), a callback event of
    a model inside the remote run (encoded data), or the final outcome. `seq` is a chunk's or
    callback's signed position in the stream (0, 1, ...): verified, so a resume point."""

    run_id: str
    chunk: bytes | None = None
    outcome: Outcome | None = None
    callback: bytes | None = None
    seq: int | None = None


# Entries per run whose digests a reader keeps, to recognise a replay (see `Taken`).
_RECENT: Final = 256


@dataclass
class Taken:
    """What one waiter has taken of each run's stream: the position of the next item, and a
    digest of each of the last entries, by the position of its first item.

    Redis replicates asynchronously: a failover can lose entries a reader already had from
    the old master, and the worker appends them again, the same signed bytes
    (worker/stream_writer.py). A reader then meets entries before its position: an exact
    replay of one it took is skipped; anything else there (a repeat with other content, such
    as another delivery starting over) is refused, as is a gap."""

    position: dict[str, int] = field(default_factory=dict)
    recent: dict[str, dict[int, bytes]] = field(default_factory=dict)

    def replayed(self, run_id: str, first: int, message: bytes) -> bool:
        return self.recent.get(run_id, {}).get(first) == _digest(message)

    def took(self, run_id: str, first: int, message: bytes, after: int) -> None:
        self.position[run_id] = after
        recent = self.recent.setdefault(run_id, {})
        recent[first] = _digest(message)
        if len(recent) > _RECENT:
            del recent[next(iter(recent))]  # the oldest (dicts keep insertion order)


def _digest(message: bytes) -> bytes:
    return hashlib.blake2b(message, digest_size=16).digest()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_entries(
    protocol: Protocol,
    response: Any,
    cursors: dict[str, str],
    taken: Taken,
    watch: rejections.Watch | None = None,
) -> list[Event]:
    """Turn an XREAD reply into verified events, advancing `cursors` (stream key -> last id)
    and `taken`, and checking that no item was dropped, repeated, reordered or relabelled (an
    exact replay of an entry already taken is skipped: `Taken`). Rejection notices
    (unsigned) go to `watch`."""
    events: list[Event] = []
    outcome_kind = stream.EntryKind.OUTCOME.wire
    notice_kind = stream.EntryKind.NOTICE.wire
    for stream_key, entries in response or []:
        key = _text(stream_key)
        run_id = key.split("{", 1)[1].split("}", 1)[0]
        for entry_id, fields in entries:
            cursors[key] = _text(entry_id)
            kind = stream.entry_kind(fields)
            if kind in stream.BATCH_KINDS:
                message = stream.entry_message(fields)
                items = protocol.open_batch(message, run_id)
                # The unsigned `k` must name the signed kind of the first item: an entry
                # relabelled (say, chunks shown as events, which a reader skips) is refused.
                if items[0].kind.value.encode() != kind:
                    raise SignatureRejected(f"the stream of run {run_id} was tampered with")
                expected = taken.position.get(run_id, 0)
                first = items[0].seq
                if first < expected and taken.replayed(run_id, first, message):
                    continue
                for item in items:
                    if item.seq != expected:
                        raise SignatureRejected(f"the stream of run {run_id} was tampered with")
                    expected += 1
                    if item.kind is stream.ItemKind.CHUNK:
                        events.append(Event(run_id, chunk=item.data, seq=item.seq))
                    else:
                        events.append(Event(run_id, callback=item.data, seq=item.seq))
                taken.took(run_id, first, message, expected)
            elif kind == outcome_kind:
                outcome = protocol.open_outcome(stream.entry_message(fields), run_id)
                if outcome.chunks != taken.position.get(run_id, 0):
                    raise SignatureRejected(f"the stream of run {run_id} lost entries")
                events.append(Event(run_id, outcome=outcome))
            elif kind == notice_kind:
                if watch is not None:
                    watch.noticed(run_id, fields)
            else:
                raise SignatureRejected(f"unknown event in the stream of run {run_id}")
    return events
