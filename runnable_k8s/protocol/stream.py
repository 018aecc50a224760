"""The wire contract of a run's event stream (`keys.events`): entry fields, entry kinds, and
the signed batch of items a chunk entry carries. Producer and worker both use it; nothing else
spells these names.

A stream entry is a Redis Stream entry with a kind field `k` and, for signed kinds, the sealed
message in `m`:

- `c` / `e`: a signed *batch* of items (output chunks and callback events of models inside
  the run). Its `k` is the kind of its first item. The signed head holds the position of the
  first item (`n`) and one kind letter per item (`k`), so every item keeps its own signed
  position: a reader can tell a dropped, repeated, reordered or relabelled item, even inside
  a batch, and an event id (a position) can point into the middle of an entry. An entry of
  one item is exactly the single-chunk entry of earlier versions.
- `r`: the run's signed outcome (`Protocol.seal_outcome`); it names how many items came first.
- `x`: a rejection notice (unsigned, a hint only: see protocol/rejection.py), fields `d`, `r`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from runnable_k8s.errors import ForgedMessage, SignatureRejected
from runnable_k8s.protocol import envelope as env
from runnable_k8s.protocol.codec import unpack

FIELD_KIND: Final = "k"
"""The entry's kind (an `EntryKind` value)."""
FIELD_MESSAGE: Final = "m"
"""The sealed message of a signed entry."""
FIELD_DIGEST: Final = "d"
"""A rejection notice's digest of the bytes a worker could not verify."""
FIELD_REASON: Final = "r"
"""A rejection notice's reason label."""

# The same names as redis-py returns them (bytes), for readers.
KIND_KEY: Final = FIELD_KIND.encode()
MESSAGE_KEY: Final = FIELD_MESSAGE.encode()


class ItemKind(enum.StrEnum):
    """What one item of a signed batch is."""

    CHUNK = "c"
    """An output chunk of the run (encoded data)."""
    EVENT = "e"
    """A callback event of a model inside the run (encoded data)."""


class EntryKind(enum.StrEnum):
    """The `k` field of a stream entry."""

    CHUNK = ItemKind.CHUNK.value
    """A signed batch whose first item is an output chunk."""
    EVENT = ItemKind.EVENT.value
    """A signed batch whose first item is a callback event."""
    OUTCOME = "r"
    """The run's signed outcome."""
    NOTICE = "x"
    """An unsigned rejection notice."""

    @property
    def wire(self) -> bytes:
        """The value as redis-py reads it back."""
        return self.value.encode()


BATCH_KINDS: Final = frozenset({EntryKind.CHUNK.wire, EntryKind.EVENT.wire})
"""`k` values (bytes) of entries that carry signed items: the ones a reader counts."""


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a batch: its signed position in the run's stream, its kind, its data."""

    seq: int
    kind: ItemKind
    data: bytes


def entry_kind(fields: Any) -> bytes | None:
    """The `k` field of an entry as read (bytes), or None if it has none."""
    kind = fields.get(KIND_KEY) if isinstance(fields, Mapping) else None
    return kind if isinstance(kind, bytes) else None


def entry_message(fields: Any) -> bytes:
    """The `m` field of an entry as read (b"" if missing: it will not verify)."""
    wire = fields.get(MESSAGE_KEY) if isinstance(fields, Mapping) else None
    return wire if isinstance(wire, bytes) else b""


def signed_fields(kind: EntryKind, sealed: bytes) -> dict[Any, Any]:
    """The fields of a signed entry, as written (typed loosely: redis-py's `xadd` wants its
    own invariant mapping type)."""
    return {FIELD_KIND: kind.value, FIELD_MESSAGE: sealed}


def seal_batch(
    signer: env.Signer, run_id: str, first: int, items: Sequence[tuple[ItemKind, bytes]]
) -> bytes:
    """Seal items published together; `first` is the first item's position."""
    if not items:
        raise ValueError("a batch holds at least one item")
    kinds = "".join(kind.value for kind, _ in items)
    # What `pack({"n": first, "k": kinds}, *data)` writes (tests/unit/test_stream_contract.py
    # compares them), without a JSON encoder per entry: the kinds are letters, the rest ints.
    lengths = ",".join([str(len(data)) for _, data in items])
    head = f'{{"n":{int(first)},"k":"{kinds}","seg":[{lengths}]}}\n'.encode()
    body = b"".join([head, *(data for _, data in items)])
    return signer.seal(env.Envelope(env.CHUNK, run_id, env.FAR_FUTURE, body))


def batch_overhead(items: int) -> int:
    """Bytes of a batch body beyond its items' data (a bound: the head's JSON)."""
    return 64 + 12 * items


def open_batch(signer: env.Signer, wire: bytes, run_id: str) -> list[Item]:
    """Verify a batch entry's message and return its items, in order.

    Raises:
        SignatureRejected: forged, tampered, malformed, or another run's entry.
    """
    envelope = signer.open(wire, kind=env.CHUNK)
    if envelope.run_id != run_id:
        raise ForgedMessage(f"message belongs to run {envelope.run_id}, not {run_id}")
    head, segments = unpack(envelope.body)
    first, kinds = head.get("n"), head.get("k")
    if (
        not isinstance(first, int)
        or isinstance(first, bool)
        or first < 0
        or not isinstance(kinds, str)
        or len(kinds) != len(segments)
        or not segments
    ):
        raise SignatureRejected("malformed stream entry")
    try:
        return [
            Item(first + i, ItemKind(kind), data)
            for i, (kind, data) in enumerate(zip(kinds, segments, strict=True))
        ]
    except ValueError as exc:
        raise SignatureRejected("malformed stream entry (unknown item kind)") from exc
