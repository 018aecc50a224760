"""Findings of a security and correctness review, each shown by a test that failed before
its fix (unreadable status records, forged leases, hostile message copies, Redis errors outside
the error tree, tampered streams, a cancel racing the start, runs lost to unexpected errors).

Attacker model as in README "Security model": whoever can read and write Redis, without the
signing key."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis

from runnable_k8s import RemoteRun, RunnableK8s, Settings
from runnable_k8s.errors import RunError, RunnableK8sError, WaitTimeout
from runnable_k8s.models import DemoChatModel
from runnable_k8s.producer.client import AsyncClient, client_for, new_run_id
from runnable_k8s.protocol import keys, task_message
from runnable_k8s.protocol.codec import data_codec
from runnable_k8s.protocol.messages import RunRequest
from runnable_k8s.worker.execution import Executor
from runnable_k8s.worker.rescue import Rescuer
from tests.conftest import make_settings
from tests.support.workers import REPO, WorkerProcess

QUESTION = "What does Pikachu evolve from?"


def _outcome_within(settings: Settings, run_id: str, seconds: float) -> str | None:
    """The state of the run's recorded outcome, or None if none arrives in time."""
    try:
        for event in client_for(settings).events([run_id], timeout=seconds):
            if event.outcome is not None:
                return event.outcome.state
    except WaitTimeout:
        return None
    return None


# -- 1. an unverifiable status record makes the claim loop spin forever ----------------------


def test_garbage_status_record_wedges_worker_in_hot_loop(
    redis_url: str, redis_client: redis.Redis, logs_dir: Path
) -> None:
    settings = make_settings(redis_url)
    run = RunnableK8s(bound=DemoChatModel(), settings=settings).submit(QUESTION)
    # The attacker overwrites the queued run's status with bytes that do not verify.
    redis_client.set(keys.status(run.id), b"not a signed record")
    worker = WorkerProcess(settings, logs_dir, concurrency=2, name="review-garbage-status")
    try:
        worker.wait_ready()
        state = _outcome_within(settings, run.id, 6)
        spins = worker.log().count(f"ignored unverifiable status record run={run.id}")
        assert state is not None, (
            f"run {run.id} got no outcome in 6 s; the worker re-read and re-claimed it "
            f"{spins} times (one warning per spin) and is still spinning"
        )
    finally:
        worker.kill()


# -- 2. an unsigned lock without TTL wedges a worker slot forever ----------------------------


def test_forged_lock_without_ttl_wedges_worker_slots(
    redis_url: str, redis_client: redis.Redis, logs_dir: Path
) -> None:
    settings = make_settings(redis_url)
    remote = RunnableK8s(bound=DemoChatModel(), settings=settings)
    victim = remote.submit(QUESTION)
    redis_client.set(keys.lock(victim.id), b"attacker")  # no TTL: never "lapses"
    worker = WorkerProcess(settings, logs_dir, concurrency=1, name="review-forged-lock")
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


# -- 3. a non-object message copy aborts every rescue sweep -----------------------------------


def test_one_hostile_message_copy_stops_all_rescues(redis_url: str) -> None:
    async def scenario() -> list[str]:
        client = aredis.Redis.from_url(redis_url)
        try:
            queue = f"review-rescue-{uuid.uuid4().hex[:8]}"
            good, poison = new_run_id(), new_run_id()
            lost = task_message.build("x", run_id=good, queue=queue, description="t")
            # A genuine run whose message the broker lost: copy kept, neither queued nor held.
            await client.set(keys.message(good), lost)
            # The attacker's entry, sorted first.
            await client.set(keys.message(poison), b"5")
            await client.zadd(keys.pending(queue), {poison: 0, good: 1})
            return await Rescuer(client, queue, after=0.0, every=1.0).sweep()
        finally:
            await client.aclose()

    assert asyncio.run(scenario())  # the lost run is rescued (today: ResponseError)


# -- 4. wrong-type keys raise redis errors outside the RunnableK8sError tree ------------------


def test_wrong_type_events_key_raises_outside_error_tree(
    redis_url: str, redis_client: redis.Redis
) -> None:
    settings = make_settings(redis_url)  # no worker on this queue
    run = RunnableK8s(bound=DemoChatModel(), settings=settings).submit(QUESTION)
    redis_client.set(keys.events(run.id), b"not a stream")
    with pytest.raises(RunnableK8sError):
        run.result(timeout=2)


def test_submit_onto_wrong_type_queue_raises_outside_error_tree(
    redis_url: str, redis_client: redis.Redis
) -> None:
    settings = make_settings(redis_url)
    redis_client.set(settings.queue, b"not a list")
    with pytest.raises(RunnableK8sError):
        RunnableK8s(bound=DemoChatModel(), settings=settings).submit(QUESTION)


# -- 5. stream entries are not bound to their position or their entry kind -------------------


def test_tampered_chunk_stream_is_accepted(
    settings: Settings, worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    run = RunnableK8s(bound=DemoChatModel(), settings=settings).submit(QUESTION, stream=True)
    honest = "".join(c.content for c in RemoteRun(run.id, settings).stream(timeout=30))
    key = keys.events(run.id)
    entries = [fields for _, fields in redis_client.xrange(key)]
    chunks = [f for f in entries if f[b"k"] == b"c"]
    final = [f for f in entries if f[b"k"] == b"r"]
    assert len(chunks) >= 3 and len(final) == 1
    # Rewrite the stream with only genuine signed entries: first chunk twice, the second one
    # relabelled as a callback event (silently dropped by the reader), the rest reversed.
    tampered = [chunks[0], chunks[0], {b"k": b"e", b"m": chunks[1][b"m"]}, *chunks[2:][::-1]]
    redis_client.delete(key)
    for fields in [*tampered, *final]:
        redis_client.xadd(key, fields)
    try:
        got = "".join(c.content for c in RemoteRun(run.id, settings).stream(timeout=30))
    except RunnableK8sError:
        return  # tampering detected: what should happen
    assert got == honest, f"accepted tampered stream {got!r} (honest: {honest!r})"


# -- 6. a cancel that lands between the claim and track() is lost ----------------------------


def test_cancel_right_after_claim_is_lost(redis_url: str) -> None:
    settings = make_settings(redis_url)

    async def scenario() -> tuple[str, str]:
        executor = Executor(settings)
        listener = asyncio.ensure_future(executor.listen_for_cancellations())
        producer = AsyncClient(settings, executor.protocol)
        try:
            await asyncio.sleep(0.3)  # the listener is subscribed
            request = RunRequest(
                run_id=new_run_id(),
                mode="invoke",
                name="slow",
                runnable=b"",
                input=data_codec().encode_data(1.0),
                expires_at=time.time() + 600,
                ref="tests.support.refs:slow",
            )
            await producer.submit([request])
            raw = await executor.redis.rpop(settings.queue)
            wire = json.loads(json.loads(raw)["body"])[0][0]

            records = executor.records
            claim = records.claim
            seen: list[str] = []

            async def claim_then_user_cancels(*args: object, **kwargs: object) -> object:
                verdict = await claim(*args, **kwargs)  # type: ignore[arg-type]
                if verdict[0] == "ok":
                    # The user cancels now; the worker's loop delivers the publish before the
                    # continuation that tracks the task (widened here to make it certain).
                    seen.append((await producer.cancel(request.run_id)).state)
                    await asyncio.sleep(0.3)
                return verdict

            records.claim = claim_then_user_cancels  # type: ignore[method-assign]
            await executor.handle(wire)
            _, fields = (await executor.redis.xrange(keys.events(request.run_id)))[-1]
            outcome = executor.protocol.open_outcome(fields[b"m"], request.run_id)
            return seen[0], outcome.state
        finally:
            listener.cancel()
            executor.leases.stop()
            await producer.aclose()
            await executor.redis.aclose()

    status_at_cancel, final = asyncio.run(scenario())
    assert status_at_cancel == "running"  # cancel() told the user it was running
    assert final == "cancelled", f"cancelled run ran to completion: outcome {final!r}"


# -- 7. unexpected exceptions leave a run 'running' forever, with no outcome -----------------

_APP = {
    "__init__.py": "",
    # A worker-image module that reads its configuration at import (very common).
    "graphs.py": """
        import os
        from langchain_core.runnables import RunnableLambda
        DATABASE_URL = os.environ["REVIEW_DATABASE_URL"]   # KeyError when not configured
        agent = RunnableLambda(lambda x: x)
        """,
    # A runnable whose own code ends with CancelledError (an inner task it awaited was
    # cancelled), without any cancellation of the run.
    "tasks.py": """
        import asyncio
        from langchain_core.runnables import RunnableLambda

        async def _work(x):
            inner = asyncio.ensure_future(asyncio.sleep(10))
            asyncio.get_running_loop().call_later(0.05, inner.cancel)
            return await inner

        job = RunnableLambda(_work)
        """,
}


@pytest.fixture(scope="module")
def app_worker(
    redis_url: str, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, WorkerProcess]]:
    root = tmp_path_factory.mktemp("review-app")
    package = root / "review_app"
    package.mkdir()
    for name, source in _APP.items():
        (package / name).write_text(textwrap.dedent(source))
    settings = make_settings(redis_url, allowed_refs=("review_app.",))
    process = WorkerProcess(
        settings, logs_dir, name="review-app", env={"PYTHONPATH": f"{REPO}:{root}"}
    )
    process.wait_ready()
    yield settings, process
    process.kill()


def test_ref_module_failing_at_import_gives_no_outcome(
    app_worker: tuple[Settings, WorkerProcess],
) -> None:
    settings, _ = app_worker
    remote = RunnableK8s(ref="review_app.graphs:agent", settings=settings, timeout=8)
    with pytest.raises(RunError) as info:
        remote.invoke("hi")
    assert not isinstance(info.value, WaitTimeout), "no outcome recorded: caller timed out"


def test_runnable_raising_cancelled_error_gives_no_outcome(
    app_worker: tuple[Settings, WorkerProcess],
) -> None:
    settings, _ = app_worker
    run = RunnableK8s(ref="review_app.tasks:job", settings=settings, timeout=8).submit("hi")
    state = _outcome_within(settings, run.id, 8)
    assert state is not None, f"no outcome; status still {run.status().state!r}"
