"""Why a run ended (protocol/reasons.py) and how both sides classify refusals: each reason
round-trips through a signed outcome and status, reads as its kind on the producer's side, and
a refused message is labelled by its exception type, never by its text."""

from __future__ import annotations

import pytest

from runnable_k8s.errors import (
    ExecutionTimeout,
    ForgedMessage,
    MessageExpired,
    PayloadTooLarge,
    RemoteError,
    RunRejected,
    SignatureRejected,
    SigningKeyMismatch,
)
from runnable_k8s.producer.results import error_for
from runnable_k8s.protocol import envelope as env
from runnable_k8s.protocol import rejection
from runnable_k8s.protocol.messages import Outcome, Protocol, RemoteFailure, RunStatus
from runnable_k8s.protocol.reasons import Reason, detail_of, reason_of, rejected
from runnable_k8s.settings import Settings
from runnable_k8s.worker.failures import outcome_label, reject_reason, short_reason
from tests.unit.conftest import KEY_B

# As the previous version wrote them: an outcome it recorded must read the same.
EARLIER = {
    "timeout": Reason.TIMEOUT,
    "interrupted": Reason.INTERRUPTED,
    "expired": Reason.EXPIRED,
    "cancelled before start": Reason.CANCELLED_BEFORE_START,
    "rejected: 'os:system' is not in this worker's allowlist": Reason.REJECTED,
    "unverified (bad_signature): a worker could not verify this run's signature": (
        Reason.UNVERIFIED
    ),
}


@pytest.mark.parametrize(("text", "kind"), EARLIER.items())
def test_reasons_written_by_the_previous_version_read_as_their_kind(
    text: str, kind: Reason
) -> None:
    assert reason_of(text) is kind


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ValueError",
        "openai.RateLimitError",
        "rejected_things.Error",  # an error type whose name only begins like a kind
        "rejected",
        "unverified",
        "Timeout",
        "cancelled",
    ],
)
def test_free_text_has_no_kind(text: str) -> None:
    assert reason_of(text) is None
    assert detail_of(text) == ""


def test_a_rejection_keeps_what_was_refused() -> None:
    text = rejected("class 'x.Y' is not allowed")
    assert text == "rejected: class 'x.Y' is not allowed"  # the previous version's text
    assert reason_of(text) is Reason.REJECTED
    assert detail_of(text) == "class 'x.Y' is not allowed"


@pytest.mark.parametrize("label", rejection.REASONS)
def test_an_unverified_run_keeps_its_label(label: str) -> None:
    text = rejection.reason(label)
    assert reason_of(text) is Reason.UNVERIFIED
    assert detail_of(text) == label
    assert rejection.label_of(text) == label


@pytest.mark.parametrize(
    "reason",
    [*Reason.__members__.values(), rejected("no"), rejection.reason("too_large"), "KeyError"],
)
def test_each_reason_round_trips_through_a_signed_outcome_and_status(
    protocol: Protocol, reason: str
) -> None:
    outcome = Outcome("run-a", "failed", reason=reason)
    read = protocol.open_outcome(protocol.seal_outcome(outcome), "run-a")
    assert read.reason == str(reason)
    assert type(read.reason) is str
    assert read.cause is reason_of(str(reason))
    status = RunStatus("run-a", "failed", reason=reason)
    assert protocol.open_status(protocol.seal_status(status), "run-a").reason == str(reason)


@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        (Outcome("r", "failed", reason=Reason.TIMEOUT), ExecutionTimeout),
        (Outcome("r", "failed", reason=rejected("no")), RunRejected),
        (Outcome("r", "failed", reason=rejection.reason("bad_signature")), SigningKeyMismatch),
        (Outcome("r", "failed", reason=rejection.reason("too_large")), RunRejected),
        (Outcome("r", "failed", reason=Reason.INTERRUPTED), RemoteError),
        (Outcome("r", "failed", error=RemoteFailure("KeyError", "k", "tb")), RemoteError),
    ],
)
def test_the_producer_raises_the_error_of_each_kind(
    outcome: Outcome, error: type[Exception]
) -> None:
    raised = error_for(outcome)
    assert type(raised) is error


def test_an_interrupted_run_says_so_and_a_remote_error_keeps_its_type() -> None:
    interrupted = error_for(Outcome("r", "failed", reason=Reason.INTERRUPTED, chunks=3))
    assert isinstance(interrupted, RemoteError)
    assert "after 3 entries" in str(interrupted)
    failed = error_for(Outcome("r", "failed", error=RemoteFailure("KeyError", "k", "tb")))
    assert isinstance(failed, RemoteError) and failed.remote_type == "KeyError"


@pytest.mark.parametrize(
    ("outcome", "label", "short"),
    [
        (Outcome("r", "failed", reason=Reason.TIMEOUT), "timeout", "timeout"),
        (Outcome("r", "failed", reason=rejected("secret detail")), "rejected", "disallowed"),
        (Outcome("r", "failed", reason="rejected_things.Error"), "failed", "rejected_things.Error"),
        (Outcome("r", "expired", reason=Reason.EXPIRED), "expired", "expired"),
        (Outcome("r", "succeeded"), "succeeded", ""),
    ],
)
def test_the_worker_labels_outcomes_by_kind(outcome: Outcome, label: str, short: str) -> None:
    assert outcome_label(outcome) == label
    assert short_reason(outcome) == short


def test_a_forged_or_moved_message_raises_its_own_type(protocol: Protocol) -> None:
    other = Protocol(Settings(signing_key=KEY_B))
    sealed = other.seal_outcome(Outcome("run-a", "succeeded"))
    with pytest.raises(ForgedMessage):  # another key
        protocol.open_outcome(sealed, "run-a")
    mine = protocol.seal_outcome(Outcome("run-a", "succeeded"))
    with pytest.raises(ForgedMessage):  # another run's outcome
        protocol.open_outcome(mine, "run-b")
    with pytest.raises(ForgedMessage):  # another kind
        protocol.open_status(mine, "run-a")
    with pytest.raises(SignatureRejected) as malformed:
        protocol.open_outcome(b"not an envelope", "run-a")
    assert not isinstance(malformed.value, ForgedMessage)


@pytest.mark.parametrize(
    ("exc", "label"),
    [
        (ForgedMessage("anything at all"), "bad_signature"),
        # The text of a forgery, on an error that is not one: labelled by type, not text.
        (SignatureRejected("signature mismatch (forged or tampered message)"), "malformed"),
        (PayloadTooLarge("x"), "too_large"),
        (MessageExpired("x"), "expired"),
    ],
)
def test_a_refused_message_is_labelled_by_its_type(exc: SignatureRejected, label: str) -> None:
    assert reject_reason(exc) == label


def test_an_envelope_signed_with_another_key_is_a_forgery(signer: env.Signer) -> None:
    other = env.Signer(KEY_B, max_body_bytes=1024)
    wire = other.seal(env.Envelope(env.RUN, "run-a", env.FAR_FUTURE, b"body"))
    with pytest.raises(ForgedMessage):
        signer.open(wire, kind=env.RUN)
