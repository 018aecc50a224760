"""Fire-and-forget handles, streaming, events, cancellation, timeouts, expiry and retries."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableParallel, RunnablePassthrough

from runnable_k8s import (
    ExecutionTimeout,
    RemoteError,
    RunCancelled,
    RunnableK8s,
    RunNotFound,
    Settings,
    WaitTimeout,
)
from runnable_k8s.models import DemoChatModel
from runnable_k8s.producer.aclient import AsyncClient
from runnable_k8s.producer.client import new_run_id
from runnable_k8s.producer.handles import RemoteRun
from runnable_k8s.protocol.codec import data_codec
from runnable_k8s.protocol.messages import RunRequest
from runnable_k8s.store import keys
from runnable_k8s.worker.execution import Executor
from tests.conftest import make_settings
from tests.support.models import FlakyModel, SlowModel
from tests.support.workers import REPO, WorkerProcess, worker_env

PIKACHU = "What does Pikachu evolve from?"


def wait_for_state(run: RemoteRun, state: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.status().state == state:
            return
        time.sleep(0.02)
    raise AssertionError(f"run {run.id} never reached {state}: {run.status()}")


def local_chain() -> Runnable[dict[str, str], str]:
    """The chain the remote tests run, run here: what every remote answer must equal."""
    prompt = ChatPromptTemplate.from_messages([("human", "{input}")])
    return prompt | DemoChatModel() | StrOutputParser()


def test_submit_returns_at_once_and_any_process_can_attach(
    settings: Settings, worker: WorkerProcess
) -> None:
    # At once: while a five-second run is still queued or running ("succeeded" here would
    # mean submit waited for it).
    slow = RunnableK8s(bound=SlowModel(delay=5.0, chunks=1), settings=settings).submit("wait")
    assert slow.status().state in {"queued", "running"}
    slow.cancel()
    remote = RunnableK8s(bound=DemoChatModel(), settings=settings)
    run = remote.submit(PIKACHU)
    assert run.status().state in {"queued", "running", "succeeded"}
    again = RemoteRun.attach(run.id, settings)
    assert "Pichu" in again.result(timeout=30).content
    status = again.status()
    assert status.state == "succeeded"
    assert status.attempt == 1
    assert status.created_at and status.started_at and status.finished_at
    assert status.created_at <= status.started_at <= status.finished_at
    assert run.result().content == again.result().content  # results are kept


async def test_asubmit_and_aresult(settings: Settings, worker: WorkerProcess) -> None:
    remote = RunnableK8s(bound=DemoChatModel(), settings=settings)
    run = await remote.asubmit(PIKACHU)
    assert "Pichu" in (await run.aresult(timeout=30)).content
    assert (await run.astatus()).state == "succeeded"


def test_unknown_id_is_a_clear_error_not_a_hang(settings: Settings) -> None:
    with pytest.raises(RunNotFound, match="never submitted, or expired"):
        RemoteRun.attach("does-not-exist", settings)
    with pytest.raises(RunNotFound):
        RemoteRun("does-not-exist", settings).result(timeout=300)
    with pytest.raises(RunNotFound):
        list(RemoteRun("does-not-exist", settings).stream())


def test_wait_timeout_and_execution_timeout_are_distinct(
    settings: Settings, worker: WorkerProcess
) -> None:
    waiting = RunnableK8s(bound=SlowModel(delay=2.0), settings=settings, timeout=0.3)
    with pytest.raises(WaitTimeout):
        waiting.invoke("slow")
    limited = RunnableK8s(bound=SlowModel(delay=30.0), settings=settings, time_limit=0.5)
    run = limited.submit("too slow")
    with pytest.raises(ExecutionTimeout):
        run.result(timeout=30)
    assert run.status().state == "failed"
    assert run.status().reason == "timeout"


def test_stream_first_chunk_arrives_while_the_run_is_still_going(
    settings: Settings, worker: WorkerProcess
) -> None:
    remote = RunnableK8s(bound=SlowModel(delay=0.4, chunks=4), settings=settings)
    run = remote.submit("hello", stream=True)
    chunks = run.stream(timeout=30)
    first = next(chunks)
    assert isinstance(first, AIMessageChunk)
    assert first.content == "part0 "
    # The run has not finished: no outcome is in its stream yet.
    assert run.status().state == "running"
    rest = list(chunks)
    # LangChain chat models end a stream with an empty closing chunk.
    assert [c.content for c in rest if c.content] == ["part1 ", "part2 ", "part3 "]
    assert run.status().state == "succeeded"


def test_stream_chunks_add_up_to_invoke(settings: Settings, worker: WorkerProcess) -> None:
    remote = RunnableK8s(bound=DemoChatModel(), settings=settings)
    chunks = list(remote.stream(PIKACHU))
    assert len(chunks) > 3
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    # Against the model run here, not only against another remote run (both could be wrong).
    local = DemoChatModel().invoke(PIKACHU).content
    assert "Pichu" in local
    assert total.content == remote.invoke(PIKACHU).content == local
    chain = (
        ChatPromptTemplate.from_messages([("human", "{input}")])
        | RunnableK8s(bound=DemoChatModel(), settings=settings)
        | StrOutputParser()
    )
    expected = local_chain().invoke({"input": PIKACHU})
    assert "".join(chain.stream({"input": PIKACHU})) == chain.invoke({"input": PIKACHU}) == expected


def test_streamed_run_of_a_chat_model_ends_with_the_message_invoke_returns(
    settings: Settings, worker: WorkerProcess
) -> None:
    # invoke of a chat model (or a chain ending in one) returns an AIMessage, not the
    # AIMessageChunk its stream's chunks add up to: a streamed run's result is invoke's.
    chain = ChatPromptTemplate.from_messages([("human", "{input}")]) | DemoChatModel()
    for bound, given in ((DemoChatModel(), PIKACHU), (chain, {"input": PIKACHU})):
        remote = RunnableK8s(bound=bound, settings=settings)
        invoked = remote.invoke(given)
        streamed = remote.submit(given, stream=True).result(timeout=30)
        assert type(invoked) is AIMessage
        assert type(streamed) is AIMessage
        assert streamed.content == invoked.content
        assert streamed.tool_calls == invoked.tool_calls
    # The same for a model's answer inside the dicts a parallel step's chunks merge into.
    model = ChatPromptTemplate.from_messages([("human", "{input}")]) | DemoChatModel()
    for step in (RunnableParallel(answer=model), RunnablePassthrough.assign(answer=model)):
        remote = RunnableK8s(bound=step, settings=settings)
        invoked = remote.invoke({"input": PIKACHU})
        streamed = remote.submit({"input": PIKACHU}, stream=True).result(timeout=30)
        assert type(invoked["answer"]) is AIMessage
        assert type(streamed["answer"]) is AIMessage
        assert streamed["answer"].content == invoked["answer"].content
        assert streamed.keys() == invoked.keys()


async def test_astream_yields_chunks(settings: Settings, worker: WorkerProcess) -> None:
    remote = RunnableK8s(bound=DemoChatModel(), settings=settings)
    text = "".join([str(c.content) async for c in remote.astream(PIKACHU)])
    assert (
        text == (await remote.ainvoke(PIKACHU)).content == DemoChatModel().invoke(PIKACHU).content
    )


def test_second_process_joins_a_running_stream_from_its_start(
    settings: Settings, worker: WorkerProcess
) -> None:
    remote = RunnableK8s(bound=SlowModel(delay=0.3, chunks=5), settings=settings)
    run = remote.submit("hello", stream=True)
    wait_for_state(run, "running")
    script = (
        "import sys, json\n"
        "from runnable_k8s import Settings\n"
        "from runnable_k8s.producer.handles import RemoteRun\n"
        "run = RemoteRun.attach(sys.argv[1], Settings.from_env())\n"
        "for c in run.stream(timeout=60):\n"
        "    if c.content: print(json.dumps(c.content), flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, run.id],
        env=worker_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert [json.loads(line) for line in out.stdout.splitlines()] == [f"part{i} " for i in range(5)]


def test_stream_keys_expire(
    settings: Settings, worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    run = RunnableK8s(bound=DemoChatModel(), settings=settings).submit(PIKACHU, stream=True)
    run.result(timeout=30)
    ttl = redis_client.ttl(keys.events(run.id))
    assert 0 < ttl <= settings.result_ttl
    assert 0 < redis_client.ttl(keys.status(run.id)) <= settings.result_ttl


async def test_astream_events_show_the_remote_models_tokens(
    settings: Settings, worker: WorkerProcess
) -> None:
    chain = (
        ChatPromptTemplate.from_messages([("human", "{input}")])
        | RunnableK8s(bound=DemoChatModel(), settings=settings, name="remote")
        | StrOutputParser()
    )
    events = [e async for e in chain.astream_events({"input": PIKACHU}, version="v2")]
    kinds = [e["event"] for e in events]
    assert "on_chat_model_start" in kinds and "on_chat_model_end" in kinds
    tokens = [e["data"]["chunk"].content for e in events if e["event"] == "on_chat_model_stream"]
    assert (
        "".join(tokens)
        == chain.invoke({"input": PIKACHU})
        == local_chain().invoke({"input": PIKACHU})
    )
    model_start = next(e for e in events if e["event"] == "on_chat_model_start")
    remote_start = next(
        e for e in events if e["event"] == "on_chain_start" and e["name"] == "remote"
    )
    # The replayed model run is a child of the RunnableK8s step.
    assert remote_start["run_id"] in model_start["parent_ids"]


def test_retries_transient_errors_with_attempts_in_status(
    settings: Settings, worker: WorkerProcess
) -> None:
    flaky = RunnableK8s(bound=FlakyModel(failures=2, token=uuid.uuid4().hex), settings=settings)
    run = flaky.submit("hi")
    assert run.result(timeout=30).content == "ok after 3 calls"
    assert run.status().attempt == 3
    worker.wait_for_log(f"retrying run={run.id} attempt=3")
    hopeless = RunnableK8s(bound=FlakyModel(failures=5, token=uuid.uuid4().hex), settings=settings)
    run = hopeless.submit("hi")
    with pytest.raises(RemoteError) as caught:
        run.result(timeout=30)
    assert caught.value.remote_type == "tests.support.models.TransientError"
    assert run.status().attempt == settings.max_attempts


@pytest.fixture(scope="module")
def single_slot(redis_url: str, logs_dir: Path) -> Iterator[tuple[Settings, WorkerProcess]]:
    """A worker that holds one run at a time."""
    settings = make_settings(redis_url)
    process = WorkerProcess(settings, logs_dir, concurrency=1, name="single")
    process.wait_ready()
    yield settings, process
    process.stop()


def test_cancel_running_and_queued_runs(single_slot: tuple[Settings, WorkerProcess]) -> None:
    settings, worker = single_slot
    slow = RunnableK8s(bound=SlowModel(delay=60.0), settings=settings)
    running = slow.submit("a minute")
    wait_for_state(running, "running")
    queued = slow.submit("behind it")
    time.sleep(0.3)
    assert queued.status().state == "queued"

    assert queued.cancel().state == "queued"
    with pytest.raises(RunCancelled):
        queued.result(timeout=5)  # recorded at once: no worker needed
    assert queued.status().state == "cancelled"

    started = time.monotonic()
    running.cancel()
    with pytest.raises(RunCancelled):
        running.result(timeout=30)
    assert time.monotonic() - started < 10  # generous: "within about a second"
    assert running.status().state == "cancelled"
    worker.wait_for_log(f"cancelling run={running.id}")
    # The queued run's message reaches the worker later and is not started.
    worker.wait_for_log(f"ignored delivery of finished run run={queued.id}")
    # The slot is free again.
    quick = RunnableK8s(bound=DemoChatModel(), settings=settings)
    assert "Pichu" in quick.invoke(PIKACHU).content


def test_a_cancel_between_claim_and_start_still_cancels_the_run(redis_url: str) -> None:
    settings = make_settings(redis_url)  # a queue of its own: this test plays the worker

    async def scenario() -> tuple[str, str]:
        executor = Executor(settings)
        subscribed = await executor.redis.pubsub_numsub(keys.CANCEL_CHANNEL)
        listener = asyncio.ensure_future(executor.cancellations.listen())
        producer = AsyncClient(settings, executor.protocol)
        try:
            # The listener is subscribed (other workers of the session may be too).
            deadline = time.monotonic() + 10
            while await executor.redis.pubsub_numsub(keys.CANCEL_CHANNEL) == subscribed:
                assert time.monotonic() < deadline, "the cancel listener never subscribed"
                await asyncio.sleep(0.01)
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
