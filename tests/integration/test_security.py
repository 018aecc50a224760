"""Forged, tampered, expired, replayed, disallowed and oversized messages: each is refused
with a clear error or log line, nothing runs, and the worker serves the next good run."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from runnable_k8s import (
    BrokerUnavailable,
    PayloadTooLarge,
    RemoteRun,
    RunExpired,
    RunnableK8s,
    RunRejected,
    Settings,
)
from runnable_k8s.models import DemoChatModel
from runnable_k8s.producer.client import client_for, new_run_id
from runnable_k8s.protocol import rejection, task_message
from runnable_k8s.protocol.codec import data_codec
from runnable_k8s.protocol.messages import Protocol, RunRequest
from runnable_k8s.settings import SigningKey
from runnable_k8s.store import keys
from runnable_k8s.worker.execution import Executor
from tests.conftest import make_settings
from tests.support.fake_openai import FakeOpenAI
from tests.support.redis_scan import contains
from tests.support.workers import WorkerProcess


def request_for(
    settings: Settings, runnable_json: bytes, payload: object = "hi", **kw: object
) -> RunRequest:
    fields: dict[str, object] = {
        "run_id": new_run_id(),
        "mode": "invoke",
        "name": "test",
        "runnable": runnable_json,
        "input": data_codec().encode_data(payload),
        "expires_at": time.time() + 600,
    }
    fields.update(kw)
    return RunRequest(**fields)  # type: ignore[arg-type]


def demo_json(settings: Settings) -> bytes:
    return Protocol(settings).runnables.encode_runnable(DemoChatModel())


def push(client: redis.Redis, settings: Settings, wire: bytes, run_id: str) -> None:
    message = task_message.build(
        wire.decode(errors="replace"), run_id=run_id, queue=settings.queue, description="test"
    )
    client.lpush(settings.queue, message)


def assert_still_serving(settings: Settings) -> None:
    remote = RunnableK8s(bound=DemoChatModel(), settings=settings)
    assert "Pichu" in remote.invoke("What does Pikachu evolve from?").content


def assert_never_ran(client: redis.Redis, run_id: str) -> None:
    # No chunk and no outcome: at most the worker's unsigned notice that it could not verify
    # a message claiming this run (protocol/rejection.py).
    kinds = {fields.get(b"k") for _, fields in client.xrange(keys.events(run_id))}
    assert kinds <= {rejection.NOTICE}
    assert client.exists(keys.lock(run_id)) == 0


def test_tampered_message_is_rejected_and_logged(
    settings: Settings, worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    request = request_for(settings, demo_json(settings), "What does Pikachu evolve from?")
    wire, _ = Protocol(settings).seal_request(request)
    tampered = wire.replace(b"Pikachu", b"Raichu!")
    assert tampered != wire
    push(redis_client, settings, tampered, request.run_id)
    worker.wait_for_log(f"claimed_run={request.run_id} reason=signature mismatch")
    assert_never_ran(redis_client, request.run_id)
    assert_still_serving(settings)


def test_unsigned_and_foreign_key_messages_are_rejected(
    settings: Settings, worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    request = request_for(settings, demo_json(settings))
    wire, _ = Protocol(settings).seal_request(request)
    header, _mac, body = wire.split(b"\n", 2)
    unsigned = header + b"\n" + b"0" * 64 + b"\n" + body
    push(redis_client, settings, unsigned, request.run_id)
    worker.wait_for_log(f"claimed_run={request.run_id} reason=signature mismatch")

    other = settings.replace(signing_key=SigningKey(secrets.token_bytes(48)))
    foreign = request_for(settings, demo_json(settings))
    push(redis_client, settings, Protocol(other).seal_request(foreign)[0], foreign.run_id)
    worker.wait_for_log(f"claimed_run={foreign.run_id} reason=signature mismatch")

    garbage_id = new_run_id()
    push(redis_client, settings, b"not an envelope at all", garbage_id)
    worker.wait_for_log("reason=malformed envelope")
    # Not even a task argument Celery can decode: the worker must survive it too.
    redis_client.lpush(settings.queue, b"\x00\xff garbage that is not JSON")
    for run_id in (request.run_id, foreign.run_id):
        assert_never_ran(redis_client, run_id)
    assert_still_serving(settings)


def test_expired_run_is_discarded_with_a_recorded_status(
    settings: Settings, worker: WorkerProcess
) -> None:
    client = client_for(settings)
    request = request_for(settings, demo_json(settings), expires_at=time.time() - 1)
    client.submit([request])
    outcome = next(e.outcome for e in client.events([request.run_id], timeout=30) if e.outcome)
    assert outcome.state == "expired"
    assert client.status(request.run_id).state == "expired"
    remote = RunnableK8s(bound=DemoChatModel(), settings=settings)
    with pytest.raises(RunExpired):
        from runnable_k8s.producer.results import unwrap

        unwrap(client.protocol, outcome)
    assert "Vaporeon" in remote.invoke("Eevee?").content  # served, and answered this question


def test_replayed_message_does_not_run_again(
    settings: Settings, worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    client = client_for(settings)
    request = request_for(settings, demo_json(settings), "Pikachu?")
    client.submit([request])
    first = next(e.outcome for e in client.events([request.run_id], timeout=30) if e.outcome)
    assert first.state == "succeeded"
    wire, _ = client.protocol.seal_request(request)
    push(redis_client, settings, wire, request.run_id)
    worker.wait_for_log(f"ignored delivery of finished run run={request.run_id}")
    assert redis_client.xlen(keys.events(request.run_id)) == 1
    assert_still_serving(settings)


def test_disallowed_class_is_refused_by_the_worker(
    settings: Settings, worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    # Signed with the right key (a compromised producer, or a bug): the allowlist still holds.
    forged = {
        "lc": 1,
        "type": "constructor",
        "id": ["langchain_core", "prompts", "few_shot", "FewShotPromptTemplate"],
        "kwargs": {"examples": [], "example_prompt": None, "prefix": "", "suffix": ""},
    }
    request = request_for(settings, json.dumps(forged).encode())
    client = client_for(settings)
    client.submit([request])
    outcome = next(e.outcome for e in client.events([request.run_id], timeout=30) if e.outcome)
    from runnable_k8s.producer.results import unwrap

    with pytest.raises(RunRejected, match=r"FewShotPromptTemplate.*not allowed"):
        unwrap(client.protocol, outcome)
    worker.wait_for_log(f"rejected run={request.run_id}")
    assert_still_serving(settings)


def test_producer_refuses_oversized_input_before_enqueueing(
    settings: Settings, redis_client: redis.Redis
) -> None:
    small = settings.replace(max_body_bytes=64 * 1024)
    before = redis_client.llen(small.queue)
    with pytest.raises(PayloadTooLarge, match="exceeds RUNNABLE_K8S_MAX_BODY_BYTES"):
        RunnableK8s(bound=DemoChatModel(), settings=small).invoke("x" * 100_000)
    assert redis_client.llen(small.queue) == before


def test_replayed_large_message_of_a_finished_run_repeats_its_outcome(
    settings: Settings, worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    # A large input travels beside its message, and the run's finish drops it: a later
    # delivery of the same message (a redelivery after a lost ack, a replay) cannot be
    # verified any more, yet it is a finished run's, not a forgery: no "rejected" alarm, no
    # notice, and its Celery task state repeats the run's outcome (SUCCESS), not FAILURE.
    client = client_for(settings)
    request = request_for(settings, demo_json(settings), "Pikachu? " + "x" * 40_000)
    wire, beside = client.protocol.seal_request(request)
    assert beside is not None  # the body travels beside the message
    client.submit([request])
    first = next(e.outcome for e in client.events([request.run_id], timeout=30) if e.outcome)
    assert first.state == "succeeded"
    assert redis_client.exists(keys.body(request.run_id)) == 0
    push(redis_client, settings, wire, request.run_id)
    worker.wait_for_log(f"ignored delivery of finished run run={request.run_id}")
    assert_still_serving(settings)
    log = worker.log()
    assert f"rejected message claimed_run={request.run_id}" not in log
    assert f"RunNotSucceeded('claimed_run={request.run_id}" not in log
    assert log.count(f"Task runnable_k8s.run[{request.run_id}] succeeded") == 2
    assert redis_client.xlen(keys.events(request.run_id)) == 1


@pytest.fixture(scope="module")
def strict_worker(redis_url: str, logs_dir: Path) -> Iterator[tuple[Settings, WorkerProcess]]:
    """A worker whose size limit is lower than its producers'."""
    settings = make_settings(redis_url, max_body_bytes=64 * 1024)
    process = WorkerProcess(settings, logs_dir, name="strict")
    process.wait_ready()
    yield settings, process
    process.stop()


def test_worker_rejects_oversized_bodies_and_keeps_serving(
    strict_worker: tuple[Settings, WorkerProcess], redis_client: redis.Redis
) -> None:
    settings, worker = strict_worker
    generous = settings.replace(max_body_bytes=16 * 1024 * 1024)
    # A 200 KB body travels beside its message; the worker checks it against its own limit.
    big = request_for(generous, demo_json(generous), "x" * 200_000)
    client_for(generous).submit([big])
    worker.wait_for_log(f"claimed_run={big.run_id} reason=detached body of")
    # A huge inline message is refused before any parsing.
    huge_id = new_run_id()
    push(redis_client, settings, b"[1,2,3]\n" + b"A" * 300_000, huge_id)
    worker.wait_for_log("exceeds the size limit")
    assert_never_ran(redis_client, big.run_id)
    assert_still_serving(settings)
    # Its producer learns why, and no sweep pushes it to the same refusal again.
    with pytest.raises(RunRejected, match="RUNNABLE_K8S_MAX_BODY_BYTES is probably lower"):
        RemoteRun(big.run_id, generous).result(timeout=30)
    assert redis_client.zscore(keys.pending(settings.queue), big.run_id) is None


@pytest.mark.parametrize("body", ["missing", "a list"])
def test_body_beside_missing_or_of_another_type_is_rejected_and_logged(
    settings: Settings, worker: WorkerProcess, redis_client: redis.Redis, body: str
) -> None:
    big = request_for(settings, demo_json(settings), "x" * 200_000)
    wire, stored = Protocol(settings).seal_request(big)
    assert stored is not None  # large enough to travel beside its message
    if body == "a list":
        redis_client.rpush(keys.body(big.run_id), b"not", b"a", b"body")
    push(redis_client, settings, wire, big.run_id)
    worker.wait_for_log(f"claimed_run={big.run_id} reason=envelope body travels beside")
    assert_never_ran(redis_client, big.run_id)
    assert_still_serving(settings)


def test_the_body_is_read_once_where_the_pool_thread_read_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The pool thread reads a body that travels beside its message (`fetch_beside`); what
    it found is final. Told "no body", `handle` rejects the message instead of reading again;
    given no answer at all, it reads the body itself and runs the run."""
    settings = make_settings(redis_url)  # a queue of its own: no worker consumes it
    big = RunnableK8s(bound=DemoChatModel(), settings=settings)
    run = big.submit("What does Pikachu evolve from? " + "x" * 200_000)
    raw = redis_client.rpop(settings.queue)
    assert isinstance(raw, bytes)
    wire = json.loads(json.loads(raw)["body"])[0][0]
    assert redis_client.exists(keys.body(run.id)) == 1

    async def scenario() -> None:
        executor = Executor(settings)
        try:
            assert executor.fetch_beside(wire) == redis_client.get(keys.body(run.id))
            await executor.handle(wire, None)  # the pool thread found nothing
            assert_never_ran(redis_client, run.id)
            assert run.status().state == "queued"
            await executor.handle(wire)  # nobody read it: read here
        finally:
            executor.leases.stop()
            await executor.redis.aclose()
            executor.clients.close_sync()

    asyncio.run(scenario())
    assert "Pichu" in run.result(timeout=30).content


def test_dead_redis_gives_a_clear_error(settings: Settings) -> None:
    from runnable_k8s.embedded import free_port

    dead = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(BrokerUnavailable, match="cannot enqueue"):
        RunnableK8s(bound=DemoChatModel(), settings=dead).invoke("hello")


@pytest.fixture(scope="module")
def openai_worker(
    redis_url: str, logs_dir: Path
) -> Iterator[tuple[Settings, WorkerProcess, FakeOpenAI, str]]:
    worker_key = "sk-worker-" + secrets.token_hex(16)
    with FakeOpenAI() as fake:
        settings = make_settings(redis_url)
        process = WorkerProcess(
            settings,
            logs_dir,
            name="openai",
            env={"OPENAI_API_KEY": worker_key, "OPENAI_BASE_URL": fake.url},
        )
        process.wait_ready()
        yield settings, process, fake, worker_key
        process.stop()


def test_chatopenai_uses_only_the_workers_key_and_no_secret_reaches_redis(
    openai_worker: tuple[Settings, WorkerProcess, FakeOpenAI, str], redis_client: redis.Redis
) -> None:
    settings, _, fake, worker_key = openai_worker
    placeholder = "sk-placeholder-" + secrets.token_hex(8)
    llm = ChatOpenAI(model="gpt-4o-mini", api_key=SecretStr(placeholder))
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a Pokemon expert."), ("human", "{input}")]
    )
    chain = prompt | RunnableK8s(bound=llm, settings=settings) | StrOutputParser()
    assert chain.invoke({"input": "What does Pikachu evolve from?"}) == fake.answer
    assert len(fake.requests) == 1
    assert fake.requests[0]["headers"]["authorization"] == f"Bearer {worker_key}"
    assert fake.requests[0]["body"]["messages"][-1]["content"] == "What does Pikachu evolve from?"
    assert contains(redis_client, fake.answer) != []  # control: the scan sees the run's records
    assert contains(redis_client, worker_key) == []
    assert contains(redis_client, placeholder) == []
    assert contains(redis_client, settings.require_signing_key().reveal().decode()) == []


def test_payload_chosen_base_url_never_receives_the_key(
    openai_worker: tuple[Settings, WorkerProcess, FakeOpenAI, str],
) -> None:
    settings, _, fake, worker_key = openai_worker
    with FakeOpenAI() as attacker:
        honest = Protocol(settings).runnables.encode_runnable(
            ChatOpenAI(model="gpt-4o-mini", api_key=SecretStr("sk-x"))
        )
        tree = json.loads(honest)
        tree["kwargs"]["openai_api_base"] = attacker.url
        request = request_for(settings, json.dumps(tree).encode())
        client = client_for(settings)
        client.submit([request])
        outcome = next(e.outcome for e in client.events([request.run_id], timeout=30) if e.outcome)
        from runnable_k8s.producer.results import unwrap

        with pytest.raises(RunRejected, match="openai_api_base"):
            unwrap(client.protocol, outcome)
        assert attacker.requests == []
    before = len(fake.requests)
    remote = RunnableK8s(
        bound=ChatOpenAI(model="gpt-4o-mini", api_key=SecretStr("sk-x")), settings=settings
    )
    assert remote.invoke("still serving?").content == fake.answer
    assert len(fake.requests) == before + 1
    assert worker_key not in str(fake.requests[-1]["body"])


def test_unsigned_stream_entries_do_not_make_a_queued_stream_run_end_interrupted(
    redis_url: str, redis_client: redis.Redis, logs_dir: Path
) -> None:
    # Someone who can write to Redis, without the key, adds chunk-like entries to a queued
    # run's stream before any worker took it: the worker must not take them for an earlier
    # delivery's chunks and sign an "interrupted" failure for a run no worker was lost on.
    settings = make_settings(redis_url)
    run = RunnableK8s(bound=DemoChatModel(), settings=settings).submit(
        "What does Pikachu evolve from?", stream=True
    )
    redis_client.xadd(keys.events(run.id), {"k": "c", "m": "forged"})
    redis_client.xadd(keys.events(run.id), {"k": "e", "m": "forged"})
    process = WorkerProcess(settings, logs_dir, concurrency=4, name="forged-entries")
    try:
        process.wait_ready()
        deadline = time.monotonic() + 30
        while not (status := run.status()).done and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status.state == "succeeded", status
        # The stream a reader joining now reads is the run's own, whole and verified.
        assert "Pichu" in "".join(str(c.content) for c in RemoteRun(run.id, settings).stream())
        assert "Pichu" in run.result(timeout=10).content
    finally:
        process.stop()
