"""The floor under W1: a bare Celery round trip through Redis, with no LangChain and no
runnable-k8s in it (LPUSH a task message, a task that only XADDs, XREAD of that entry), and the
small chain's own cost in-process (invoke and ainvoke). Usage: `python -m benchmarks.floor`.

Any round trip through a Celery worker costs at least the first figure; a RunnableK8s invoke
of the W1 chain also pays the second (the worker runs `ainvoke`).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import redis

from benchmarks.models import small_chain
from runnable_k8s.embedded import EmbeddedRedis
from runnable_k8s.protocol import task_message

_APP = textwrap.dedent(
    """
    import os, redis
    from celery import Celery
    app = Celery("floor", broker=os.environ["FLOOR_URL"], set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_acks_late=True,
                    worker_prefetch_multiplier=1, task_ignore_result=True)
    out = redis.Redis.from_url(os.environ["FLOOR_URL"])

    @app.task(name="runnable_k8s.run", ignore_result=True)
    def run(run_id):
        out.xadd("floor:" + run_id, {"k": "r"})
    """
)


def p50_ms(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2] * 1000


def celery_floor(url: str, count: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "floorapp.py").write_text(_APP)
        env = dict(os.environ, FLOOR_URL=url, PYTHONPATH=folder)
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "floorapp", "worker", "--pool=threads",
             "--concurrency=100", "-Q", "floor", "--without-mingle", "--without-gossip",
             "--without-heartbeat", "--loglevel=WARNING"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(url)
        try:
            samples = []
            for index in range(count + 20):
                run_id = uuid.uuid4().hex
                started = time.perf_counter()
                message = task_message.build(run_id, run_id=run_id, queue="floor", description="")
                client.lpush("floor", message)
                if not client.xread({f"floor:{run_id}": "0-0"}, block=30_000):
                    raise RuntimeError("the floor worker did not answer")
                if index >= 20:  # the first ones wait for the worker to start
                    samples.append(time.perf_counter() - started)
            return p50_ms(samples)
        finally:
            worker.terminate()
            worker.wait(30)
            client.close()


def chain_costs(count: int) -> tuple[float, float]:
    chain = small_chain()
    question = {"input": "hello"}
    sync = []
    for _ in range(count):
        started = time.perf_counter()
        chain.invoke(question)
        sync.append(time.perf_counter() - started)

    async def measure() -> list[float]:
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            await chain.ainvoke(question)
            samples.append(time.perf_counter() - started)
        return samples

    return p50_ms(sync), p50_ms(asyncio.run(measure()))


def main() -> None:
    with EmbeddedRedis() as url:
        floor = celery_floor(url, 300)
    sync, asynchronous = chain_costs(300)
    print(f"bare Celery round trip (LPUSH -> task -> XADD -> XREAD), p50: {floor:.2f} ms")
    print(f"W1 chain in-process: invoke {sync:.2f} ms, ainvoke {asynchronous:.2f} ms (p50)")
    print(f"floor for a RunnableK8s invoke of it: {floor + asynchronous:.2f} ms")


if __name__ == "__main__":
    main()
