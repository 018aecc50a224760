"""State an attacker wrote into Redis beside a genuine run (an unverifiable status record, a
lease with no expiry, keys of the wrong type, a stream rebuilt from genuine signed entries):
the run still ends once with its outcome, and the caller gets the specific error, never a hang.

Attacker model as in README "Security model": whoever can read and write Redis, without the
signing key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from runnable_k8s import BrokerError, RemoteRun, RunnableK8s, Settings, SignatureRejected
from runnable_k8s.errors import WaitTimeout
from runnable_k8s.models import DemoChatModel
from runnable_k8s.producer.client import client_for
from runnable_k8s.store import keys
from tests.conftest import make_settings
from tests.support.workers import WorkerProcess

QUESTION = "What does Pikachu evolve from?"

Fields = dict[bytes, bytes]


def _outcome_within(settings: Settings, run_id: str, seconds: float) -> str | None:
    """The state of the run's recorded outcome, or None if none arrives in time."""
    try:
        for event in client_for(settings).events([run_id], timeout=seconds):
            if event.outcome is not None:
                return event.outcome.state
    except WaitTimeout:
        return None
    return None


def test_an_unverifiable_status_record_is_replaced_and_the_run_served(
    redis_url: str, redis_client: redis.Redis, logs_dir: Path
) -> None:
    settings = make_settings(redis_url)
    run = RunnableK8s(bound=DemoChatModel(), settings=settings).submit(QUESTION)
    # The attacker overwrites the queued run's status with bytes that do not verify.
    redis_client.set(keys.status(run.id), b"not a signed record")
    worker = WorkerProcess(settings, logs_dir, concurrency=2, name="garbage-status")
    try:
        worker.wait_ready()
        state = _outcome_within(settings, run.id, 6)
        spins = worker.log().count(f"ignored unverifiable status record run={run.id}")
        assert state == "succeeded", (
            f"run {run.id} got outcome {state!r} in 6 s; the worker re-read and re-claimed it "
            f"{spins} times (one warning per spin)"
        )
        assert "Pichu" in run.result(timeout=5).content
        # Replaced by the claim, not a loop that happened to end: a first delivery of a pending
        # run replaces it without reading it (taking the run off the pending set is the
        # compare-and-set, store/lua/claim.lua); any other delivery reads it once.
        assert spins <= 1, f"the unverifiable record was read {spins} times"
        assert worker.log().count(f"started run={run.id}") == 1
    finally:
        worker.kill()


def test_a_lease_without_expiry_is_taken_over_and_the_slot_stays_free(
    redis_url: str, redis_client: redis.Redis, logs_dir: Path
) -> None:
    settings = make_settings(redis_url)
    remote = RunnableK8s(bound=DemoChatModel(), settings=settings)
    victim = remote.submit(QUESTION)
    redis_client.set(keys.lock(victim.id), b"attacker")  # no TTL: never "lapses"
    worker = WorkerProcess(settings, logs_dir, concurrency=1, name="forged-lock")
    try:
        worker.wait_ready()
        # A lease with no expiry was not written by a worker: it is taken over.
        assert _outcome_within(settings, victim.id, 8) == "succeeded"
        honest = remote.submit(QUESTION)
        state = _outcome_within(settings, honest.id, 8)
        assert state == "succeeded", (
            "a later honest run was never served: the worker's only slot waits on a forged "
            f"lock; victim status: {victim.status().state}"
        )
    finally:
        worker.kill()


def test_a_wrong_type_events_key_is_a_broker_error_not_a_wait(
    redis_url: str, redis_client: redis.Redis
) -> None:
    settings = make_settings(redis_url)  # no worker on this queue
    run = RunnableK8s(bound=DemoChatModel(), settings=settings).submit(QUESTION)
    redis_client.set(keys.events(run.id), b"not a stream")
    # Not WaitTimeout (no worker will ever answer) nor a bare redis error: Redis refused.
    with pytest.raises(BrokerError, match="Redis refused: WRONGTYPE"):
        run.result(timeout=2)


def test_submitting_onto_a_wrong_type_queue_is_a_broker_error(
    redis_url: str, redis_client: redis.Redis
) -> None:
    settings = make_settings(redis_url)
    redis_client.set(settings.queue, b"not a list")
    with pytest.raises(BrokerError, match=r"cannot enqueue on Redis: Redis refused: .*WRONGTYPE"):
        RunnableK8s(bound=DemoChatModel(), settings=settings).submit(QUESTION)


# Each rebuilds the stream from genuine signed entries only (so every MAC verifies), then keeps
# the run's genuine outcome at the end. Entries are bound to their position and their kind.
# (An entry repeated byte for byte is skipped, not refused: a failover's re-append looks like
# that, and it changes nothing the reader shows. test_batched_streams.py has it, and other
# items at a position already read, refused.)
TAMPERINGS: dict[str, tuple[Callable[[list[Fields]], list[Fields]], str]] = {
    "reordered": (lambda c: [c[1], c[0], *c[2:]], "was tampered with"),
    "relabelled": (  # a chunk turned into a callback event, which the reader would drop
        lambda c: [c[0], {b"k": b"e", b"m": c[1][b"m"]}, *c[2:]],
        "was tampered with",
    ),
    "dropped-inside": (lambda c: [c[0], *c[2:]], "was tampered with"),
    "dropped-last": (lambda c: c[:-1], "lost entries"),
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
def test_a_rebuilt_chunk_stream_is_rejected(
    settings: Settings, worker: WorkerProcess, redis_client: redis.Redis, tampering: str
) -> None:
    rebuild, rejection = TAMPERINGS[tampering]
    # A token every 10 ms: one entry each (a faster model's tokens share entries, see
    # test_batched_streams.py for tampering inside one).
    model = DemoChatModel(chunk_delay=0.01)
    run = RunnableK8s(bound=model, settings=settings).submit(QUESTION, stream=True)
    honest = "".join(c.content for c in RemoteRun(run.id, settings).stream(timeout=30))
    assert "Pichu" in honest
    key = keys.events(run.id)
    entries = [fields for _, fields in redis_client.xrange(key)]
    chunks = [f for f in entries if f[b"k"] == b"c"]
    final = [f for f in entries if f[b"k"] == b"r"]
    assert len(chunks) >= 3 and len(final) == 1
    redis_client.delete(key)
    for fields in [*rebuild(chunks), *final]:
        redis_client.xadd(key, fields)  # type: ignore[arg-type]
    # The specific rejection, at once: not a WaitTimeout, not the honest text.
    with pytest.raises(SignatureRejected, match=rejection):
        "".join(c.content for c in RemoteRun(run.id, settings).stream(timeout=10))
