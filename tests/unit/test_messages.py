"""`Protocol`: requests (inline and beside), outcomes, chunks, statuses and cancels."""

from __future__ import annotations

import json
import time

import pytest

from runnable_k8s.errors import (
    ConfigurationError,
    MessageExpired,
    PayloadTooLarge,
    SignatureRejected,
)
from runnable_k8s.protocol import envelope as env
from runnable_k8s.protocol.codec import pack
from runnable_k8s.protocol.messages import (
    INLINE_BODY_LIMIT,
    Outcome,
    Protocol,
    RemoteFailure,
    RunRequest,
    RunStatus,
)
from runnable_k8s.settings import Settings
from tests.unit.conftest import KEY_B

FUTURE = 4102444800.0


def request(run_id: str = "run-a", input: bytes = b'{"q": "hi"}', **kw: object) -> RunRequest:
    return RunRequest(
        run_id=run_id,
        mode="invoke",
        name="chain",
        runnable=b'{"lc": 1}',
        input=input,
        expires_at=kw.pop("expires_at", FUTURE),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_protocol_needs_a_signing_key() -> None:
    with pytest.raises(ConfigurationError, match="SIGNING_KEY"):
        Protocol(Settings())


def test_inline_request_round_trip(protocol: Protocol) -> None:
    sent = request(
        ref="pkg.mod:chain",
        config={"tags": ["t"]},
        configs=[{"tags": ["x"]}],
        trace={"langsmith-trace": "abc"},
        time_limit=12.5,
    )
    wire, beside = protocol.seal_request(sent)
    assert beside is None
    assert protocol.open_request(wire) == sent


def test_minimal_request_round_trip(protocol: Protocol) -> None:
    sent = request()
    wire, _ = protocol.seal_request(sent)
    got = protocol.open_request(wire)
    assert got == sent
    assert got.ref is None and got.config == {} and got.configs is None


def test_large_request_travels_beside_and_reassembles(protocol: Protocol) -> None:
    big = json.dumps({"text": "x" * (INLINE_BODY_LIMIT + 10)}).encode()
    sent = request(input=big)
    wire, beside = protocol.seal_request(sent)
    assert beside is not None and big in beside
    assert big not in wire and len(wire) < 1024
    assert env.needs_body_beside(wire)
    assert protocol.open_request(wire, beside=beside) == sent
    with pytest.raises(SignatureRejected, match="missing"):
        protocol.open_request(wire)


def test_body_beside_from_another_run_rejected(protocol: Protocol) -> None:
    big = b'"' + b"y" * (INLINE_BODY_LIMIT + 10) + b'"'
    wire_a, beside_a = protocol.seal_request(request("run-a", input=big))
    _, beside_b = protocol.seal_request(request("run-b", input=big.replace(b"y", b"w")))
    assert beside_a is not None and beside_b is not None and beside_a != beside_b
    with pytest.raises(SignatureRejected):
        protocol.open_request(wire_a, beside=beside_b)


def test_small_bodies_stay_inline(protocol: Protocol) -> None:
    sent = request(input=b'"' + b"z" * (INLINE_BODY_LIMIT - 200) + b'"')
    wire, beside = protocol.seal_request(sent)
    assert beside is None
    assert protocol.open_request(wire) == sent


def test_request_over_the_size_limit_refused_when_sealed() -> None:
    protocol = Protocol(Settings(signing_key=KEY_B, max_body_bytes=4096))
    with pytest.raises(PayloadTooLarge):
        protocol.seal_request(request(input=b'"' + b"q" * 5000 + b'"'))


def test_expired_request(protocol: Protocol) -> None:
    wire, _ = protocol.seal_request(request(expires_at=time.time() - 5))
    with pytest.raises(MessageExpired):
        protocol.open_request(wire)
    assert protocol.open_request(wire, check_expiry=False).run_id == "run-a"


def test_request_from_another_key_rejected(protocol: Protocol) -> None:
    wire, _ = Protocol(Settings(signing_key=KEY_B)).seal_request(request())
    with pytest.raises(SignatureRejected):
        protocol.open_request(wire)


@pytest.mark.parametrize(
    "head",
    [
        {"mode": "explode", "name": "n"},
        {"name": "n"},
        {"mode": "invoke", "name": 5},
        {"mode": "invoke", "name": "n", "ref": ["x"]},
        {"mode": "invoke", "name": "n", "configs": {}},
        {"mode": "invoke", "name": "n", "trace": "t"},
        {"mode": "invoke", "name": "n", "time_limit": "10"},
    ],
)
def test_request_head_with_mistyped_fields_rejected(protocol: Protocol, head: dict) -> None:
    wire = protocol.signer.seal(env.Envelope(env.RUN, "r", FUTURE, pack(head, b"", b"null")))
    with pytest.raises(SignatureRejected, match="head"):
        protocol.open_request(wire)


def test_request_with_wrong_segment_count_rejected(protocol: Protocol) -> None:
    body = pack({"mode": "invoke", "name": "n"}, b"null")
    wire = protocol.signer.seal(env.Envelope(env.RUN, "r", FUTURE, body))
    with pytest.raises(SignatureRejected):
        protocol.open_request(wire)


def test_outcome_round_trip(protocol: Protocol) -> None:
    outcome = Outcome(
        run_id="run-a",
        state="failed",
        output=b"null",
        error=RemoteFailure("ValueError", "boom", "Traceback..."),
        reason="",
        attempt=3,
    )
    assert protocol.open_outcome(protocol.seal_outcome(outcome), "run-a") == outcome
    ok = Outcome("run-a", "succeeded", output=b'{"a": 1}')
    assert protocol.open_outcome(protocol.seal_outcome(ok), "run-a") == ok


def test_result_for_run_a_rejected_as_run_b(protocol: Protocol) -> None:
    wire = protocol.seal_outcome(Outcome("run-a", "succeeded", output=b'"ok"'))
    with pytest.raises(SignatureRejected, match="run-a"):
        protocol.open_outcome(wire, "run-b")


def test_non_terminal_outcome_rejected(protocol: Protocol) -> None:
    wire = protocol.seal_outcome(Outcome("run-a", "running"))
    with pytest.raises(SignatureRejected, match="state"):
        protocol.open_outcome(wire, "run-a")


def test_status_cannot_be_opened_as_a_result(protocol: Protocol) -> None:
    status = protocol.seal_status(RunStatus("run-a", "succeeded"))
    with pytest.raises(SignatureRejected, match="expected"):
        protocol.open_outcome(status, "run-a")


def test_result_cannot_be_opened_as_a_request_status_or_chunk(protocol: Protocol) -> None:
    wire = protocol.seal_outcome(Outcome("run-a", "succeeded"))
    with pytest.raises(SignatureRejected):
        protocol.open_request(wire)
    with pytest.raises(SignatureRejected):
        protocol.open_status(wire, "run-a")
    with pytest.raises(SignatureRejected):
        protocol.open_chunk(wire, "run-a")
    with pytest.raises(SignatureRejected):
        protocol.open_cancel(wire, "run-a")


def test_request_cannot_be_replayed_as_a_result(protocol: Protocol) -> None:
    wire, _ = protocol.seal_request(request())
    with pytest.raises(SignatureRejected):
        protocol.open_outcome(wire, "run-a")


def test_chunk_round_trip_and_binding(protocol: Protocol) -> None:
    wire = protocol.seal_chunk("run-a", b'{"c": 1}', seq=3, kind="e")
    # Position and kind are signed with the data: a reader can tell a dropped, repeated,
    # reordered or relabelled entry.
    assert protocol.open_chunk(wire, "run-a") == (3, "e", b'{"c": 1}')
    with pytest.raises(SignatureRejected):
        protocol.open_chunk(wire, "run-b")
    with pytest.raises(SignatureRejected):
        protocol.open_chunk(wire.replace(b'"n":3', b'"n":4'), "run-a")


def test_status_round_trip_and_binding(protocol: Protocol) -> None:
    status = RunStatus(
        "run-a", "running", name="chain", attempt=2, created_at=1.0, started_at=2.5, reason=""
    )
    wire = protocol.seal_status(status)
    got = protocol.open_status(wire, "run-a")
    assert got == status and not got.done
    assert protocol.open_status(protocol.seal_status(RunStatus("r", "expired")), "r").done
    with pytest.raises(SignatureRejected):
        protocol.open_status(wire, "run-b")


def test_malformed_status_body_rejected(protocol: Protocol) -> None:
    for body in (b"not json", b"[]", b'{"name": "x"}', b'"s"'):
        wire = protocol.signer.seal(env.Envelope(env.STATUS, "r", FUTURE, body))
        with pytest.raises(SignatureRejected, match="status"):
            protocol.open_status(wire, "r")


# A signed status whose state is not one of the known states (or not even hashable) is
# rejected, as open_outcome rejects one: callers compare states against the known set.
@pytest.mark.parametrize("state", ["exploded", ["succeeded"]])
def test_status_with_unknown_state_rejected(protocol: Protocol, state: object) -> None:
    body = json.dumps({"state": state}).encode()
    wire = protocol.signer.seal(env.Envelope(env.STATUS, "r", FUTURE, body))
    with pytest.raises(SignatureRejected):
        protocol.open_status(wire, "r")


def test_cancel_round_trip_and_binding(protocol: Protocol) -> None:
    wire = protocol.seal_cancel("run-a")
    protocol.open_cancel(wire, "run-a")
    with pytest.raises(SignatureRejected):
        protocol.open_cancel(wire, "run-b")
    opened = protocol.signer.open(wire, kind=env.CANCEL)
    assert opened.expires_at == pytest.approx(time.time() + protocol.settings.result_ttl, abs=60)


def test_tampered_outcome_rejected(protocol: Protocol) -> None:
    wire = protocol.seal_outcome(Outcome("run-a", "succeeded", output=b'"yes"'))
    with pytest.raises(SignatureRejected):
        protocol.open_outcome(wire.replace(b'"yes"', b'"no!"'), "run-a")
