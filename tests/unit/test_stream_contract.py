"""The stream wire contract (protocol/stream.py): fields, kinds and signed batches."""

from __future__ import annotations

import pytest

from runnable_k8s.errors import SignatureRejected
from runnable_k8s.protocol import envelope as env
from runnable_k8s.protocol import rejection, stream
from runnable_k8s.protocol.codec import pack, unpack
from runnable_k8s.protocol.messages import Outcome, Protocol

C, E = stream.ItemKind.CHUNK, stream.ItemKind.EVENT


def test_a_batch_round_trips_with_each_item_at_its_own_position(protocol: Protocol) -> None:
    items = [(C, b"\x00a"), (E, b'{"event": 1}'), (C, b"")]
    wire = protocol.seal_batch("run-a", 7, items)
    assert protocol.open_batch(wire, "run-a") == [
        stream.Item(7, C, b"\x00a"),
        stream.Item(8, E, b'{"event": 1}'),
        stream.Item(9, C, b""),
    ]


def test_a_batch_body_is_what_the_codec_packs(protocol: Protocol) -> None:
    # seal_batch writes the body head itself (no JSON encoder per entry): the same bytes.
    items = [(C, b"\x00a"), (E, b'{"event": 1}'), (C, b"")]
    wire = protocol.seal_batch("run-a", 12, items)
    body = protocol.signer.open(wire, kind=env.CHUNK).body
    assert body == pack({"n": 12, "k": "cec"}, b"\x00a", b'{"event": 1}', b"")


def test_a_single_item_entry_is_the_single_chunk_entry(protocol: Protocol) -> None:
    wire = protocol.seal_chunk("run-a", b"x", seq=4, kind="c")
    assert protocol.open_batch(wire, "run-a") == [stream.Item(4, C, b"x")]
    assert protocol.open_chunk(wire, "run-a") == (4, "c", b"x")
    with pytest.raises(SignatureRejected, match="malformed"):
        protocol.open_chunk(protocol.seal_batch("run-a", 0, [(C, b"1"), (C, b"2")]), "run-a")


def test_a_batch_is_bound_to_its_run_and_its_positions(protocol: Protocol) -> None:
    wire = protocol.seal_batch("run-a", 3, [(C, b"1"), (C, b"2")])
    with pytest.raises(SignatureRejected, match="belongs to run"):
        protocol.open_batch(wire, "run-b")
    with pytest.raises(SignatureRejected, match="signature mismatch"):
        protocol.open_batch(wire.replace(b'"n":3', b'"n":4'), "run-a")
    with pytest.raises(SignatureRejected, match="signature mismatch"):
        protocol.open_batch(wire.replace(b'"k":"cc"', b'"k":"ce"'), "run-a")


@pytest.mark.parametrize(
    "head",
    [
        {"n": 0, "k": "c"},  # fewer kinds than items
        {"n": 0, "k": "ccc"},  # more kinds than items
        {"n": -1, "k": "cc"},
        {"n": True, "k": "cc"},
        {"n": 0, "k": "cz"},  # an unknown kind
        {"k": "cc"},
    ],
)
def test_a_signed_but_malformed_batch_is_refused(
    protocol: Protocol, head: dict[str, object]
) -> None:
    # Signed with the right key (a bug, not an attacker): still refused, never half-read.
    body = pack(head, b"1", b"2")
    wire = protocol.signer.seal(env.Envelope(env.CHUNK, "run-a", env.FAR_FUTURE, body))
    with pytest.raises(SignatureRejected, match="malformed stream entry"):
        protocol.open_batch(wire, "run-a")


def test_an_outcome_is_not_a_batch(protocol: Protocol) -> None:
    with pytest.raises(SignatureRejected, match="expected"):
        protocol.open_batch(protocol.seal_outcome(Outcome("run-a", "succeeded")), "run-a")


def test_entry_fields_and_kinds() -> None:
    sealed = b"sealed"
    assert stream.signed_fields(stream.EntryKind.CHUNK, sealed) == {"k": "c", "m": sealed}
    read = {b"k": b"e", b"m": sealed}
    assert stream.entry_kind(read) == b"e"
    assert stream.entry_message(read) == sealed
    assert stream.entry_kind({}) is None and stream.entry_message({b"k": b"c"}) == b""
    assert stream.entry_kind("not fields") is None
    assert {b"c", b"e"} == stream.BATCH_KINDS
    assert {kind.wire for kind in stream.EntryKind} == {b"c", b"e", b"r", b"x"}
    # The notice kind is the one protocol/rejection.py names.
    assert stream.EntryKind.NOTICE.wire == rejection.NOTICE


def test_batch_overhead_bounds_the_head(protocol: Protocol) -> None:
    for count in (1, 10, 512):
        kinds = "ce" * (count // 2) + "c" * (count % 2)
        body = pack({"n": 10**12, "k": kinds}, *[b""] * count)
        head, _ = unpack(body)
        assert len(body) <= stream.batch_overhead(count)
        assert len(head["seg"]) == count
