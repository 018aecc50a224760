"""A cluster-wide concurrency limit holds across three workers, one of them SIGKILLed mid-way:
its slots lapse with their lease and the other workers take them back."""

from __future__ import annotations

import secrets
import time
import uuid
from pathlib import Path

import pytest
import redis
from langchain_core.output_parsers import StrOutputParser
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from runnable_k8s import RunnableK8s
from runnable_k8s.store.limits import limit_key
from tests.conftest import make_settings
from tests.reliability.conftest import wait_until
from tests.support.limited_openai import LimitedOpenAI
from tests.support.workers import WorkerProcess

LEASE = 3.0


@pytest.mark.timeout(240)
def test_a_concurrency_limit_of_five_holds_and_a_killed_workers_slots_come_back(
    own_redis_url: str, own_redis: redis.Redis, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    name = f"gpt-conc-{uuid.uuid4().hex[:6]}"
    # A run's wait for a slot counts against its time limit: 24 runs at once share 5 slots,
    # and on a loaded machine 10 s was too little for the unluckiest of them.
    settings = make_settings(own_redis_url, lease=LEASE, time_limit=30.0)
    with LimitedOpenAI(delay=0.5) as fake:
        env = {
            "OPENAI_API_KEY": "sk-worker-" + secrets.token_hex(8),
            "OPENAI_BASE_URL": fake.url,
            "RUNNABLE_K8S_LIMITS": f"openai:{name} concurrency=5",
            # The killed worker's runs go to the others soon after this (above the time limit).
            "RUNNABLE_K8S_VISIBILITY_TIMEOUT": "35",
        }
        for index in range(3):
            workers.append(
                WorkerProcess(settings, logs_dir, concurrency=8, env=env, name=f"conc{index}")
            )
        for worker in workers:
            worker.wait_ready(60)
        llm = ChatOpenAI(model=name, api_key=SecretStr("sk-placeholder"))
        remote = RunnableK8s(bound=llm | StrOutputParser(), settings=settings)
        runs = [remote.submit(f"call {i}") for i in range(100)]
        wait_until(lambda: len(fake.served()) >= 25, 90, "25 calls served")
        doomed = workers[0]
        held = own_redis.zcard(limit_key(f"openai:{name}", "conc"))
        doomed.kill()
        killed_at = time.monotonic()
        assert [run.result(timeout=150) for run in runs] == ["ok"] * 100
        assert fake.max_in_flight == 5
        assert fake.refused() == []
        # After the dead worker's leases lapsed, five calls were in flight again at once.
        later = [n for at, n in fake.in_flight_log if at > killed_at + LEASE + 0.5]
        assert max(later) == 5, (held, later[:40])
        assert own_redis.zcard(limit_key(f"openai:{name}", "conc")) == 0
