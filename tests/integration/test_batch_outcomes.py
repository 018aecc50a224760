"""A blocking `batch` on a real server, with the test playing the worker (no worker process
runs; where a run needs an outcome, the test appends it, signed, as a worker would): how many
runs it keeps in flight, and what it returns when a run's outcome carries a malformed item
list."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from runnable_k8s import RunnableK8s, Settings, SignatureRejected
from runnable_k8s.embedded import EmbeddedRedis
from runnable_k8s.protocol import stream
from runnable_k8s.protocol.messages import Outcome, Protocol
from runnable_k8s.store import keys
from tests.conftest import make_settings
from tests.support.models import SlowModel


@pytest.fixture
def server() -> Iterator[str]:
    with EmbeddedRedis() as url:
        yield url


def _waiting(client: redis.Redis) -> None:
    """Until a caller blocks in XREAD: whatever it submits before waiting is submitted."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(c.get("cmd") == "xread" for c in client.client_list()):
            return
        time.sleep(0.02)
    raise AssertionError("the caller never waited")


def _runs(client: redis.Redis) -> list[str]:
    found = [k.decode() for k in client.scan_iter(match=keys.status("*"))]
    return [k.split("{", 1)[1].split("}", 1)[0] for k in found]


def _batch(
    settings: Settings, inputs: list[str], **kwargs: object
) -> tuple[threading.Thread, list[list[object]]]:
    remote = RunnableK8s(bound=SlowModel(), settings=settings)
    answers: list[list[object]] = []
    caller = threading.Thread(
        target=lambda: answers.append(remote.batch(inputs, return_exceptions=True, **kwargs))
    )
    caller.start()
    return caller, answers


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("inputs", "config", "in_flight"), [(4, {}, 4), (6, {"max_concurrency": 3}, 3)]
)
def test_batch_keeps_as_many_runs_in_flight_as_asked(
    server: str, inputs: int, config: dict[str, int], in_flight: int
) -> None:
    # One input per run; the window is every run, or `max_concurrency` runs.
    settings = make_settings(server, batch_chunk_size=1, wait_timeout=3.0)
    client = redis.Redis.from_url(server)
    caller, _ = _batch(settings, [f"in{i}" for i in range(inputs)], config=config)
    try:
        _waiting(client)
        assert len(_runs(client)) == in_flight
    finally:
        caller.join(30)
        client.close()


@pytest.mark.timeout(60)
def test_a_malformed_item_list_is_an_error_in_its_places_not_none(server: str) -> None:
    # Signed, so only a worker holding the key could write it (a bug of some version, or an
    # insider): the caller must see an error, not outputs of None.
    settings = make_settings(server, wait_timeout=20.0)
    protocol = Protocol(settings)
    client = redis.Redis.from_url(server)
    caller, answers = _batch(settings, ["one", "two"])
    try:
        _waiting(client)
        (run_id,) = _runs(client)
        output = protocol.data.encode_data([{"ok": "yes", "v": 1}, {"ok": True, "v": 2}])
        sealed = protocol.seal_outcome(Outcome(run_id, "succeeded", output=output))
        client.xadd(keys.events(run_id), stream.signed_fields(stream.EntryKind.OUTCOME, sealed))
    finally:
        caller.join(30)
        client.close()
    assert answers, "batch() did not return"
    (results,) = answers
    assert len(results) == 2
    assert all(isinstance(r, SignatureRejected) for r in results), results
