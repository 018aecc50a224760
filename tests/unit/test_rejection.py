"""What a rejection notice names, and how a producer reads its own stored message back."""

from __future__ import annotations

import json

import pytest

from runnable_k8s.protocol import rejection
from runnable_k8s.protocol.task_message import argument_of, build

WIRE = '[1,"run","run-42",4102444800.0,1]\n' + "a" * 64 + '\n{"k":"payload \\u00e9"}\u00e9'


def test_the_digest_tells_apart_every_change_of_the_bytes_read() -> None:
    wire = WIRE.encode()
    digests = {
        rejection.digest(wire, None),
        rejection.digest(wire, b""),  # a body found empty is not a body missing
        rejection.digest(wire, b"body"),
        rejection.digest(wire + b"b", b"ody"),  # where the message ends is part of it
        rejection.digest(wire[:-1], None),
    }
    assert len(digests) == 5
    assert rejection.digest(wire, b"body") == rejection.digest(bytes(wire), b"body")


def test_a_stored_message_gives_back_its_argument_and_tag() -> None:
    message = build(WIRE, run_id="run-42", queue="q", description="d")
    found = argument_of(message.encode())
    assert found is not None
    assert found[0] == WIRE
    assert found[1] == json.loads(message)["properties"]["delivery_tag"]


@pytest.mark.parametrize(
    "stored",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"body": "[[1]]", "properties": {"delivery_tag": "t"}}',
        b'{"body": "[[\\"w\\"]]", "properties": {"delivery_tag": 7}}',
        b'{"body": 3, "properties": {}}',
        b'{"body": "[[\\"w\\"]]"}',
    ],
)
def test_a_hostile_stored_message_gives_nothing(stored: bytes) -> None:
    assert argument_of(stored) is None


def test_each_recorded_reason_says_what_probably_differs() -> None:
    signature = rejection.reason("bad_signature")
    assert "signing keys (RUNNABLE_K8S_SIGNING_KEY) probably differ" in signature
    assert "RUNNABLE_K8S_MAX_BODY_BYTES" in rejection.reason("too_large")
    assert "versions probably differ" in rejection.reason("malformed")
    for label in rejection.REASONS:
        assert rejection.label_of(rejection.reason(label)) == label
    assert rejection.label_of("rejected: class not allowed") is None
    assert rejection.label_of("unverified (anything else): x") == "malformed"
