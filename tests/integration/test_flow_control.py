"""Cluster-wide flow control: three real workers share one provider's limits through Redis.

The provider is a real HTTP server on loopback that enforces its own request limit and
answers 429 above it; ChatOpenAI reaches it through the workers' `OPENAI_BASE_URL`.
"""

from __future__ import annotations

import random
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import redis
from langchain_core.output_parsers import StrOutputParser
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from runnable_k8s import RunnableK8s, Settings
from runnable_k8s.embedded import free_port
from runnable_k8s.errors import ExecutionTimeout
from runnable_k8s.producer.handles import RemoteRun
from runnable_k8s.protocol.messages import Protocol
from runnable_k8s.store.limits import read_wait
from tests.conftest import make_settings
from tests.support.limited_openai import LimitedOpenAI
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.timeout(240)


def model(name: str) -> ChatOpenAI:
    # The producer's key is a placeholder; each test has its own model name, so its own keys.
    return ChatOpenAI(model=name, api_key=SecretStr("sk-placeholder"))


def start_workers(
    stack: ExitStack,
    settings: Settings,
    logs_dir: Path,
    fake: LimitedOpenAI,
    limits: str,
    *,
    count: int = 3,
    concurrency: int = 16,
    metrics_port: int = 0,
) -> list[WorkerProcess]:
    env = {
        "OPENAI_API_KEY": "sk-worker-" + secrets.token_hex(8),
        "OPENAI_BASE_URL": fake.url,
        "RUNNABLE_K8S_LIMITS": limits,
    }
    workers = []
    for index in range(count):
        # The first worker serves metrics when asked to (one port, one worker).
        port = {"RUNNABLE_K8S_METRICS_PORT": str(metrics_port)} if index == 0 else {}
        process = WorkerProcess(
            settings, logs_dir, concurrency=concurrency, env=env | port, name=f"flow{index}"
        )
        stack.callback(process.stop)
        workers.append(process)
    for process in workers:
        process.wait_ready(60)
    return workers


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def wait_shown(settings: Settings, runs: list[RemoteRun]) -> dict[str, object]:
    client = redis.Redis.from_url(settings.require_redis_url())
    signer = Protocol(settings).signer
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            for run in runs:
                found = read_wait(client, signer, run.id)
                if found is not None:
                    return found
            time.sleep(0.2)
    finally:
        client.close()
    raise AssertionError("no run showed a wait")


def results(runs: list[RemoteRun], timeout: float) -> list[object]:
    return [run.result(timeout=timeout) for run in runs]


def test_three_workers_keep_a_request_limit_the_provider_enforces(
    redis_url: str, logs_dir: Path, stack: ExitStack
) -> None:
    name = f"gpt-rate-{uuid.uuid4().hex[:6]}"
    fake = stack.enter_context(LimitedOpenAI(requests=40, period=10.0))
    settings = make_settings(redis_url)
    port = free_port()
    rule = f"openai:{name} requests=40/10s"
    start_workers(stack, settings, logs_dir, fake, rule, metrics_port=port)
    llm = model(name)
    # Three model calls per run: each spends a request.
    chain = llm | StrOutputParser() | llm | StrOutputParser() | llm | StrOutputParser()
    remote = RunnableK8s(bound=chain, settings=settings)
    runs = [remote.submit(f"question {i}") for i in range(35)]
    # While the limit holds runs back, their status says what they wait on.
    waits = wait_shown(settings, runs)
    assert waits["key"] == f"openai:{name}" and waits["reason"] == "requests", waits
    assert results(runs, 120) == ["ok"] * 35
    served = fake.served()
    assert fake.refused() == []
    assert len(served) == 105
    # Achieved rate: each full window from the first call is filled to within 10% of the limit.
    start = served[0].at
    for window in range(2):
        count = sum(1 for a in served if start + 10 * window <= a.at < start + 10 * (window + 1))
        assert 36 <= count <= 40, (window, count)
    # The first worker's metrics count the time its calls waited on the limit.
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    waited = re.search(
        rf'runnable_k8s_limit_wait_seconds_total{{key="openai:{name}",reason="requests"}} (\S+)',
        metrics,
    )
    assert waited is not None and float(waited.group(1)) > 0, metrics[-2000:]


def test_a_token_limit_holds_within_ten_percent_with_calls_of_mixed_sizes(
    redis_url: str, logs_dir: Path, stack: ExitStack
) -> None:
    name = f"gpt-tokens-{uuid.uuid4().hex[:6]}"
    fake = stack.enter_context(LimitedOpenAI())
    settings = make_settings(redis_url)
    start_workers(stack, settings, logs_dir, fake, f"openai:{name} tokens=1500/5s")
    remote = RunnableK8s(bound=model(name) | StrOutputParser(), settings=settings)
    sizes = [random.Random(i).randint(20, 200) for i in range(50)]
    runs = [remote.submit("x" * size) for size in sizes]
    assert results(runs, 150) == ["ok"] * 50
    served = fake.served()
    assert sorted(a.tokens for a in served) == sorted(sizes)
    assert fake.max_in_window(5.0, tokens=True) <= 1500 * 1.1
    # Not slower than the limit allows: the first two full windows carry 90% of it or more.
    start = served[0].at
    for window in range(2):
        used = sum(a.tokens for a in served if start + 5 * window <= a.at < start + 5 * window + 5)
        assert used >= 1500 * 0.9, (window, used)


def test_a_429_with_retry_after_pauses_the_key_on_every_worker(
    redis_url: str, logs_dir: Path, stack: ExitStack
) -> None:
    name = f"gpt-pause-{uuid.uuid4().hex[:6]}"
    fake = stack.enter_context(LimitedOpenAI(delay=0.2))
    settings = make_settings(redis_url)
    workers = start_workers(
        stack, settings, logs_dir, fake, f"openai:{name} requests=1000/1m", concurrency=4
    )
    remote = RunnableK8s(bound=model(name) | StrOutputParser(), settings=settings)
    warm = [remote.submit(f"warm {i}") for i in range(12)]
    assert results(warm, 60) == ["ok"] * 12
    fake.answer_next_with_429("5")
    runs = [remote.submit(f"during {i}") for i in range(24)]
    assert results(runs, 90) == ["ok"] * 24
    (refused,) = fake.refused()
    after = [a.at - refused.at for a in fake.served() if a.at > refused.at]
    # Nobody called the provider for that key during the pause, except calls that had taken
    # their slot before the 429 came back (they arrive within moments of it).
    during = [t for t in after if t < 4.8]
    assert after and all(t < 1.0 for t in during), during
    # Every worker had calls held by the pause, not only the one that got the 429.
    for worker in workers:
        log = worker.log()
        assert "reason=paused" in log, log[-2000:]


def test_a_malformed_limit_spec_stops_the_worker_at_start_naming_the_rule(
    redis_url: str, logs_dir: Path
) -> None:
    settings = make_settings(redis_url)
    spec = "openai rpm=100\nopenai:gpt-4o-mini rpm=100 tpm=lots"
    process = WorkerProcess(settings, logs_dir, env={"RUNNABLE_K8S_LIMITS": spec}, name="badspec")
    try:
        assert process.process.wait(60) != 0
    finally:
        process.stop()
    log = process.log()
    assert "RUNNABLE_K8S_LIMITS rule 2 ('openai:gpt-4o-mini rpm=100 tpm=lots')" in log, log
    assert "ready." not in log


def test_a_call_cut_off_by_the_time_limit_frees_its_concurrency_slot(
    redis_url: str, logs_dir: Path, stack: ExitStack
) -> None:
    name = f"gpt-cut-{uuid.uuid4().hex[:6]}"
    fake = stack.enter_context(LimitedOpenAI(slow=30.0))
    # A lease far longer than the wait below: only the run's end can free the slot in time.
    settings = make_settings(redis_url, time_limit=3.0, lease=90.0)
    start_workers(stack, settings, logs_dir, fake, f"openai:{name} concurrency=1", count=1)
    remote = RunnableK8s(bound=model(name) | StrOutputParser(), settings=settings)
    cut = remote.submit("slow answer")
    with pytest.raises(ExecutionTimeout):
        cut.result(timeout=60)
    # The slot comes back when the run ends, not a lease later nor never (renewed).
    assert remote.submit("fast answer").result(timeout=45) == "ok"
