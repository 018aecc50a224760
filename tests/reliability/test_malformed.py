"""Hostile queue items (random bytes, wrong schemas, huge bodies, bad signatures), generated
with hypothesis and pushed straight onto the queue: each is rejected and logged, nothing runs,
and the same worker process keeps serving."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runnable_k8s import RunnableK8s
from runnable_k8s.embedded import EmbeddedRedis
from runnable_k8s.models import DemoChatModel
from runnable_k8s.producer.client import new_run_id
from runnable_k8s.protocol import task_message
from runnable_k8s.protocol.codec import data_codec
from runnable_k8s.protocol.messages import Protocol, RunRequest
from runnable_k8s.settings import Settings, SigningKey
from tests.conftest import make_settings
from tests.reliability.conftest import wait_until
from tests.support.workers import WorkerProcess

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, WorkerProcess]]:
    server = EmbeddedRedis()
    url = server.start()
    config = make_settings(url, max_body_bytes=MAX_BODY)
    worker = WorkerProcess(config, tmp_path_factory.mktemp("malformed"), concurrency=8)
    worker.wait_ready()
    yield config, worker
    worker.stop()
    server.close()


def request(config: Settings, text: str = "hi") -> RunRequest:
    return RunRequest(
        run_id=new_run_id(),
        mode="invoke",
        name="probe",
        runnable=Protocol(config).runnables.encode_runnable(DemoChatModel()),
        input=data_codec().encode_data(text),
        expires_at=time.time() + 600,
    )


def wrap(config: Settings, wire: str, run_id: str) -> str:
    return task_message.build(wire, run_id=run_id, queue=config.queue, description="hostile")


def push_and_check(config: Settings, worker: WorkerProcess, items: list[bytes]) -> None:
    """Push `items`, then a good run behind them: it must succeed on the same process, after
    the worker logged a rejection per item, and no hostile item may have started a run."""
    client = redis.Redis.from_url(config.require_redis_url())
    try:
        before = worker.log().count("rejected")
        started_before = worker.log().count("started run=")
        for item in items:
            client.lpush(config.queue, item)
        good = RunnableK8s(bound=DemoChatModel(), settings=config, timeout=30)
        assert "demo model" in good.invoke("still there?").content
        wait_until(
            lambda: worker.log().count("rejected") - before >= len(items),
            15,
            f"{len(items)} rejections logged",
        )
        assert worker.log().count("started run=") == started_before + 1
        assert worker.process.poll() is None
    finally:
        client.close()


HYPO = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


@pytest.mark.timeout(120)
@HYPO
@given(items=st.lists(st.binary(min_size=0, max_size=2048), min_size=1, max_size=8))
def test_random_bytes(target: tuple[Settings, WorkerProcess], items: list[bytes]) -> None:
    config, worker = target
    push_and_check(config, worker, items)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@pytest.mark.timeout(120)
@HYPO
@given(bodies=st.lists(json_values, min_size=1, max_size=6))
def test_wrong_schema(target: tuple[Settings, WorkerProcess], bodies: list[object]) -> None:
    """Celery-shaped messages whose task argument is any JSON but a sealed request, and bare
    JSON that is not a Celery message at all, objects included."""
    config, worker = target
    items = []
    for body in bodies:
        items.append(wrap(config, json.dumps(body), new_run_id()).encode())
        if not isinstance(body, dict):
            items.append(json.dumps(body).encode())
    push_and_check(config, worker, items)


@pytest.mark.timeout(60)
def test_a_json_object_that_is_not_a_message_is_rejected_without_a_reconnect(
    target: tuple[Settings, WorkerProcess],
) -> None:
    config, worker = target
    push_and_check(config, worker, [b"{}", b'{"body": "x", "headers": {}}'])
    assert "Connection to broker lost" not in worker.log()


@pytest.mark.timeout(120)
@HYPO
@given(flips=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=4))
def test_bad_signatures(target: tuple[Settings, WorkerProcess], flips: list[int]) -> None:
    """Sealed with another key, or a valid seal with bytes changed."""
    config, worker = target
    forger = config.replace(signing_key=SigningKey(secrets.token_urlsafe(48).encode()))
    items = []
    for flip in flips:
        forged = request(config)
        wire, _ = Protocol(forger).seal_request(forged)
        items.append(wrap(config, wire.decode(), forged.run_id).encode())
        genuine = request(config)
        sealed, _ = Protocol(config).seal_request(genuine)
        index = flip % len(sealed)
        tampered = sealed[:index] + bytes([sealed[index] ^ 0x01]) + sealed[index + 1 :]
        items.append(wrap(config, tampered.decode(errors="replace"), genuine.run_id).encode())
    push_and_check(config, worker, items)


@pytest.mark.timeout(120)
@HYPO
@given(sizes=st.lists(st.integers(min_value=MAX_BODY + 2048, max_value=4 * MAX_BODY), max_size=3))
def test_huge_bodies(target: tuple[Settings, WorkerProcess], sizes: list[int]) -> None:
    config, worker = target
    items = [wrap(config, "x" * size, new_run_id()).encode() for size in sizes]
    items.append(b"y" * (4 * MAX_BODY))
    push_and_check(config, worker, items)
