"""`pack`/`unpack`: a JSON head line followed by length-prefixed raw segments."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from runnable_k8s.errors import SignatureRejected
from runnable_k8s.protocol.codec import pack, unpack


def test_layout() -> None:
    body = pack({"mode": "invoke"}, b"ab", b"")
    assert body == b'{"mode":"invoke","seg":[2,0]}\nab'


@hsettings(max_examples=150, deadline=None)
@given(
    head=st.dictionaries(
        st.text(max_size=8).filter(lambda k: k != "seg"), st.integers(), max_size=4
    ),
    segments=st.lists(st.binary(max_size=64), max_size=5),
)
def test_round_trip(head: dict[str, int], segments: list[bytes]) -> None:
    got_head, got_segments = unpack(pack(head, *segments))
    assert got_segments == segments
    assert got_head == {**head, "seg": [len(s) for s in segments]}


def test_segments_may_contain_newlines_and_json() -> None:
    segments = [b"\n\n", b'{"seg":[99]}\n', b"\x00\xff"]
    assert unpack(pack({}, *segments))[1] == segments


def test_head_cannot_override_segment_lengths() -> None:
    head, segments = unpack(pack({"seg": [100]}, b"abc"))
    assert head["seg"] == [3] and segments == [b"abc"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\n",
        b"no newline",
        b"not json\nabc",
        b"[1,2]\nabc",
        b'{"mode":"x"}\nabc',  # no seg
        b'{"seg":"3"}\nabc',
        b'{"seg":[4]}\nabc',  # segment runs past the end
        b'{"seg":[2]}\nabc',  # trailing bytes
        b'{"seg":[-1]}\nabc',
        b'{"seg":[1.5]}\nabc',
        b'{"seg":[null]}\nabc',
        b'\n{"seg":[3]}\nabc',  # empty head line
    ],
)
def test_malformed_framing_rejected(body: bytes) -> None:
    with pytest.raises(SignatureRejected):
        unpack(body)


@hsettings(max_examples=100, deadline=None)
@given(extra=st.binary(min_size=1, max_size=16))
def test_any_trailing_bytes_rejected(extra: bytes) -> None:
    with pytest.raises(SignatureRejected, match="trailing"):
        unpack(pack({"a": 1}, b"x", b"yz") + extra)


def test_head_is_compact_json() -> None:
    body = pack({"a": [1, 2]}, b"x")
    head_line = body.split(b"\n", 1)[0]
    assert json.loads(head_line) == {"a": [1, 2], "seg": [1]}
    assert b" " not in head_line
