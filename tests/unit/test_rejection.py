"""What a rejection notice names, and how a producer reads its own stored message back."""

from __future__ import annotations

import json
import time

import pytest

from runnable_k8s.producer import rejections
from runnable_k8s.protocol import rejection
from runnable_k8s.protocol.messages import Protocol, RunRequest, RunStatus
from runnable_k8s.protocol.task_message import argument_of, build
from runnable_k8s.settings import Settings
from tests.unit.conftest import KEY_B

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


def submitted(protocol: Protocol, body: str = "hi") -> tuple[bytes, bytes, bytes | None]:
    """What a producer stores for one run: its queued status, message copy and body."""
    request = RunRequest("run-42", "invoke", "probe", b"{}", body.encode(), time.time() + 60)
    wire, beside = protocol.seal_request(request)
    status = protocol.seal_status(RunStatus("run-42", "queued", "probe", 0, created_at=1.0))
    copy = build(wire.decode(), run_id="run-42", queue="q", description="d").encode()
    return status, copy, beside


def notice(digest: str, reason: str = "bad_signature") -> dict[bytes, bytes]:
    return {b"k": rejection.NOTICE, b"d": digest.encode(), b"r": reason.encode()}


def test_only_the_producers_own_signed_copy_is_evidence(protocol: Protocol) -> None:
    status, copy, _ = submitted(protocol)
    found = rejections.evidence(protocol, "run-42", copy, None)
    assert found is not None
    wire = argument_of(copy)
    assert wire is not None
    assert found.digest == rejection.digest(wire[0].encode(), None)
    assert rejections.evidence(protocol, "run-43", copy, None) is None  # another run's copy
    other = Protocol(Settings(signing_key=KEY_B))
    assert rejections.evidence(other, "run-42", copy, None) is None  # not signed by this key
    assert rejections.evidence(protocol, "run-42", status, None) is None  # not a message


def test_a_body_beside_the_copy_is_part_of_its_evidence(protocol: Protocol) -> None:
    _, copy, beside = submitted(protocol, "x" * 100_000)
    assert beside is not None
    found = rejections.evidence(protocol, "run-42", copy, beside)
    assert found is not None
    wire = argument_of(copy)
    assert wire is not None
    assert found.digest == rejection.digest(wire[0].encode(), beside)
    assert rejections.evidence(protocol, "run-42", copy, beside[:-1] + b"!") is None
    assert rejections.evidence(protocol, "run-42", copy, None) is None


def test_a_notice_for_other_bytes_is_forgotten(protocol: Protocol) -> None:
    status, copy, _ = submitted(protocol)
    watch = rejections.Watch(protocol)
    watch.noticed("run-42", notice("0" * 64))
    assert watch.due() == ["run-42"]
    assert watch.plan("run-42", [status, copy, None]) is None
    assert watch.due() == [] and watch.next_due() is None


def test_the_failure_is_recorded_only_on_a_second_look_a_grace_period_later(
    protocol: Protocol,
) -> None:
    status, copy, _ = submitted(protocol)
    found = rejections.evidence(protocol, "run-42", copy, None)
    assert found is not None
    watch = rejections.Watch(protocol)
    watch.noticed("run-42", notice(found.digest))
    planned = watch.plan("run-42", [status, copy, None])
    assert planned is not None
    assert planned[1][5] == ""  # a look, not a record
    assert planned[1][2] == found.signature
    watch.verdict("run-42", b"gone")
    assert watch.due() == []  # not before the grace period
    soonest = watch.next_due()
    assert soonest is not None and soonest - time.monotonic() > rejections.GRACE - 0.1
    time.sleep(rejections.GRACE)
    assert watch.due() == ["run-42"]
    planned = watch.plan("run-42", [status, copy, None])
    assert planned is not None
    assert planned[1][5] == "1"  # record, if the script still finds the message gone
    outcome = protocol.open_outcome(planned[1][7], "run-42")
    recorded = protocol.open_status(planned[1][6], "run-42")
    assert outcome.state == recorded.state == "failed"
    assert "signing keys (RUNNABLE_K8S_SIGNING_KEY) probably differ" in outcome.reason
    assert recorded.reason == outcome.reason and recorded.name == "probe"
    watch.verdict("run-42", b"held")  # seen again somewhere: start over
    assert watch.last("run-42") == "held"
    planned = watch.plan("run-42", [status, copy, None])
    assert planned is not None and planned[1][5] == ""
    watch.verdict("run-42", b"failed")
    assert watch.failed == {"run-42"} and watch.next_due() is None


def test_a_run_already_claimed_is_not_checked(protocol: Protocol) -> None:
    _, copy, _ = submitted(protocol)
    found = rejections.evidence(protocol, "run-42", copy, None)
    assert found is not None
    running = protocol.seal_status(RunStatus("run-42", "running", "probe", 1))
    watch = rejections.Watch(protocol)
    watch.noticed("run-42", notice(found.digest))
    assert watch.plan("run-42", [running, copy, None]) is None
