"""Signed envelopes: round trips, tampering, keys, kinds, expiry, size limits, detached bodies."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from runnable_k8s.errors import (
    MessageExpired,
    MessageRejected,
    PayloadTooLarge,
    SignatureRejected,
)
from runnable_k8s.protocol import envelope as env
from runnable_k8s.protocol.envelope import Envelope, Signer, needs_body_beside, peek_header
from tests.unit.conftest import KEY_A, KEY_B

FUTURE = 4102444800.0
SIGNER = Signer(KEY_A, max_body_bytes=64 * 1024)
BODY = b'{"input": "hello", "n": [1, 2, 3]}\xe2\x9c\x93'
WIRE = SIGNER.seal(Envelope(env.RUN, "run-1", FUTURE, BODY))
HEADER_END = WIRE.index(b"\n")
MAC_END = HEADER_END + 1 + 64

DETACHED = Envelope(env.RUN, "run-big", FUTURE, b"x" * 5000, flags=env.FLAG_BODY_BESIDE)
DETACHED_WIRE = SIGNER.seal(DETACHED, detach_body=True)


def flip(wire: bytes, index: int, mask: int) -> bytes:
    out = bytearray(wire)
    out[index] ^= mask
    return bytes(out)


def test_wire_layout() -> None:
    header, mac, body = WIRE.split(b"\n", 2)
    assert json.loads(header) == [1, "run", "run-1", FUTURE, 0]
    assert len(mac) == 64 and all(c in b"0123456789abcdef" for c in mac)
    assert body == BODY


def test_round_trip(signer: Signer) -> None:
    sealed = signer.seal(Envelope(env.CHUNK, "r-9", FUTURE, BODY))
    opened = signer.open(sealed, kind=env.CHUNK)
    assert opened == Envelope(env.CHUNK, "r-9", FUTURE, BODY, 0, env.VERSION)


def test_round_trip_of_empty_body(signer: Signer) -> None:
    sealed = signer.seal(Envelope(env.CANCEL, "r", FUTURE, b""))
    assert signer.open(sealed, kind=env.CANCEL).body == b""


def test_body_with_newlines_and_binary(signer: Signer) -> None:
    body = b"\n\n\x00\xff\nline\n"
    sealed = signer.seal(Envelope(env.RESULT, "r", FUTURE, body))
    assert signer.open(sealed, kind=env.RESULT).body == body


@hsettings(max_examples=300, deadline=None)
@given(index=st.integers(0, len(WIRE) - 1), mask=st.integers(1, 255))
def test_any_flipped_byte_is_rejected(index: int, mask: int) -> None:
    with pytest.raises(SignatureRejected):
        SIGNER.open(flip(WIRE, index, mask), kind=env.RUN)


@pytest.mark.parametrize(
    ("start", "end"), [(0, HEADER_END + 1), (HEADER_END + 1, MAC_END + 1), (MAC_END + 1, len(WIRE))]
)
@hsettings(max_examples=60, deadline=None)
@given(data=st.data())
def test_flipped_byte_in_each_region_is_rejected(start: int, end: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(start, end - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    with pytest.raises(SignatureRejected):
        SIGNER.open(flip(WIRE, index, mask), kind=env.RUN)


@hsettings(max_examples=100, deadline=None)
@given(index=st.integers(0, len(DETACHED.body) - 1), mask=st.integers(1, 255))
def test_flipped_byte_in_detached_body_is_rejected(index: int, mask: int) -> None:
    with pytest.raises(SignatureRejected):
        SIGNER.open(DETACHED_WIRE, kind=env.RUN, body=flip(DETACHED.body, index, mask))


@hsettings(max_examples=100, deadline=None)
@given(cut=st.integers(0, len(WIRE) - 1))
def test_truncated_wire_is_rejected(cut: int) -> None:
    with pytest.raises(SignatureRejected):
        SIGNER.open(WIRE[:cut], kind=env.RUN)


def test_appended_bytes_are_rejected() -> None:
    with pytest.raises(SignatureRejected):
        SIGNER.open(WIRE + b" ", kind=env.RUN)


def test_wrong_key_rejected() -> None:
    other = Signer(KEY_B, max_body_bytes=64 * 1024)
    with pytest.raises(SignatureRejected, match="signature"):
        other.open(WIRE, kind=env.RUN)


def test_resigned_header_change_is_rejected() -> None:
    # Changing the run id and keeping the old MAC must fail even if the JSON stays valid.
    forged = WIRE.replace(b'"run-1"', b'"run-2"', 1)
    assert forged != WIRE
    with pytest.raises(SignatureRejected):
        SIGNER.open(forged, kind=env.RUN)


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\n",
        b"\n\n",
        b"garbage",
        BODY,
        b'[1,"run","r",4102444800.0,0]\n' + b"0" * 63 + b"\n",
        b'[1,"run","r",4102444800.0,0]\n' + b"0" * 64 + b"\n",
        b'[1,"run","r",4102444800.0,0]\n\n' + BODY,
        b"not json\n" + b"0" * 64 + b"\n" + BODY,
        b'[1,"run","r"]\n' + b"0" * 64 + b"\n",
        b'[2,"run","r",4102444800.0,0]\n' + b"0" * 64 + b"\n",
        b'[1,5,"r",4102444800.0,0]\n' + b"0" * 64 + b"\n",
        b'[1,"run","r","soon",0]\n' + b"0" * 64 + b"\n",
        b'[1,"run","r",4102444800.0,"0"]\n' + b"0" * 64 + b"\n",
        b"\xff\xfe\n" + b"0" * 64 + b"\n",
        b'{"a":1}\n' + b"0" * 64 + b"\n",
        b"x" * 600 + b"\n" + b"0" * 64 + b"\n",  # header longer than the 512-byte bound
    ],
)
def test_unsigned_garbage_and_empty_input_rejected(wire: bytes) -> None:
    with pytest.raises(SignatureRejected):
        SIGNER.open(wire, kind=env.RUN)


def test_unsigned_message_with_plausible_mac_rejected() -> None:
    header = Envelope(env.RUN, "r", FUTURE, BODY).header()
    with pytest.raises(SignatureRejected, match="signature mismatch"):
        SIGNER.open(header + b"\n" + b"a" * 64 + b"\n" + BODY, kind=env.RUN)


@pytest.mark.parametrize("expected", [env.RESULT, env.CHUNK, env.STATUS, env.CANCEL, "RUN"])
def test_kind_mismatch_rejected(expected: str) -> None:
    with pytest.raises(SignatureRejected, match="expected") as caught:
        SIGNER.open(WIRE, kind=expected)
    assert "'run'" in str(caught.value)


def test_expired_message() -> None:
    now = time.time()
    wire = SIGNER.seal(Envelope(env.RUN, "r", now - 1, BODY))
    with pytest.raises(MessageExpired, match="r"):
        SIGNER.open(wire, kind=env.RUN)
    assert SIGNER.open(wire, kind=env.RUN, check_expiry=False).body == BODY


def test_expiry_uses_the_clock_override() -> None:
    wire = SIGNER.seal(Envelope(env.RUN, "r", 1000.0, BODY))
    assert SIGNER.open(wire, kind=env.RUN, now=999.0).expires_at == 1000.0
    assert SIGNER.open(wire, kind=env.RUN, now=1000.0).expires_at == 1000.0
    with pytest.raises(MessageExpired):
        SIGNER.open(wire, kind=env.RUN, now=1000.001)


def test_tampered_expired_message_is_a_signature_error_not_an_expiry() -> None:
    wire = SIGNER.seal(Envelope(env.RUN, "r", 1.0, BODY))
    with pytest.raises(SignatureRejected):
        SIGNER.open(wire + b"!", kind=env.RUN)


@pytest.mark.parametrize("expires_at", [float("inf"), float("nan")])
def test_non_finite_expiry_rejected_even_when_signed(expires_at: float) -> None:
    # json.dumps writes Infinity/NaN; a message that never expires is not accepted.
    wire = SIGNER.seal(Envelope(env.RUN, "r", expires_at, BODY))
    with pytest.raises(SignatureRejected):
        SIGNER.open(wire, kind=env.RUN, check_expiry=False)


def test_integer_expiry_accepted() -> None:
    envelope = Envelope(env.RUN, "r", 4102444800, BODY)  # type: ignore[arg-type]
    opened = SIGNER.open(SIGNER.seal(envelope), kind=env.RUN)
    assert opened.expires_at == 4102444800.0 and isinstance(opened.expires_at, float)


def test_seal_refuses_oversize_body() -> None:
    small = Signer(KEY_A, max_body_bytes=1024)
    with pytest.raises(PayloadTooLarge, match="1024"):
        small.seal(Envelope(env.RESULT, "r", FUTURE, b"x" * 1025))
    wire = small.seal(Envelope(env.RESULT, "r", FUTURE, b"x" * 1024))
    assert small.open(wire, kind=env.RESULT).body == b"x" * 1024


def test_oversize_garbage_is_rejected_as_too_large_before_parsing() -> None:
    signer = Signer(KEY_A, max_body_bytes=16 * 1024 * 1024)
    blob = b"\x00garbage" * (20 * 1024 * 1024 // 8)
    with pytest.raises(PayloadTooLarge):
        signer.open(blob, kind=env.RUN)


def test_oversize_but_well_formed_message_is_too_large() -> None:
    big = Signer(KEY_A, max_body_bytes=4096)
    wire = big.seal(Envelope(env.RUN, "r", FUTURE, b"y" * 4096))
    small = Signer(KEY_A, max_body_bytes=1024)
    with pytest.raises(PayloadTooLarge):
        small.open(wire, kind=env.RUN)
    assert issubclass(PayloadTooLarge, MessageRejected)


def test_detached_body_round_trip() -> None:
    assert b"x" * 5000 not in DETACHED_WIRE
    assert needs_body_beside(DETACHED_WIRE)
    assert not needs_body_beside(WIRE)
    opened = SIGNER.open(DETACHED_WIRE, kind=env.RUN, body=DETACHED.body)
    assert opened.body == DETACHED.body
    assert opened.flags & env.FLAG_BODY_BESIDE


def test_detached_body_missing() -> None:
    with pytest.raises(SignatureRejected, match="missing"):
        SIGNER.open(DETACHED_WIRE, kind=env.RUN)


def test_detached_body_empty_is_not_the_body() -> None:
    with pytest.raises(SignatureRejected):
        SIGNER.open(DETACHED_WIRE, kind=env.RUN, body=b"")


def test_both_inline_and_detached_body() -> None:
    both = SIGNER.seal(DETACHED)  # flag set but the body left inline as well
    with pytest.raises(SignatureRejected, match="both"):
        SIGNER.open(both, kind=env.RUN, body=DETACHED.body)


def test_swapped_detached_body_from_another_message() -> None:
    other = Envelope(env.RUN, "run-other", FUTURE, b"z" * 5000, flags=env.FLAG_BODY_BESIDE)
    SIGNER.seal(other, detach_body=True)
    with pytest.raises(SignatureRejected, match="signature"):
        SIGNER.open(DETACHED_WIRE, kind=env.RUN, body=other.body)


def test_detached_body_over_the_limit() -> None:
    with pytest.raises(PayloadTooLarge):
        SIGNER.open(DETACHED_WIRE, kind=env.RUN, body=b"x" * (64 * 1024 + 1))


def test_dropping_the_beside_flag_is_rejected() -> None:
    # Pretend the detached body was inline: header changes, so the MAC fails.
    forged = DETACHED_WIRE.replace(b",1]\n", b",0]\n", 1) + DETACHED.body
    assert forged != DETACHED_WIRE + DETACHED.body
    with pytest.raises(SignatureRejected):
        SIGNER.open(forged, kind=env.RUN, body=DETACHED.body)


def test_peek_header_reads_unverified_fields() -> None:
    header = peek_header(DETACHED_WIRE)
    assert header == env.Header("run", "run-big", FUTURE, env.FLAG_BODY_BESIDE)
    forged = peek_header(b'[1,"' + b"k" * 100 + b'","' + b"i" * 100 + b'",1,0]\n')
    assert forged is not None and len(forged.kind) == 32 and len(forged.run_id) == 64


@pytest.mark.parametrize(
    "wire",
    [b"", b"garbage", b"x" * 1000 + b"\n", b"[1,2]\n", b"5\n", b'[1,"k","r",null,0]\n', b"\xff\n"],
)
def test_peek_header_of_garbage_is_none(wire: bytes) -> None:
    assert peek_header(wire) is None
    assert needs_body_beside(wire) is False


# Numbers that overflow int()/float() (int(inf), float(huge int)) raise OverflowError, not
# ValueError: the worker calls peek_header on unverified input and must never raise on it.
@pytest.mark.parametrize(
    "wire", [b'[1,"run","r",1,1e999]\n', b'[1,"run","r",1' + b"0" * 400 + b",0]\n"]
)
def test_peek_header_of_hostile_numbers_is_none(wire: bytes) -> None:
    assert peek_header(wire) is None
    assert needs_body_beside(wire) is False
