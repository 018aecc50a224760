"""The plain Celery baseline: a stock Celery 5 app on the same Redis (broker and result
backend), JSON serializer, whose tasks do the same work in-process on the worker.

Worker (the benchmark starts it itself):

    BENCHMARK_REDIS_URL=redis://... PYTHONPATH=. \
        celery -A benchmarks.baseline worker --pool=threads --concurrency=100 \
        --queues=<queue> --without-mingle --without-gossip

The chains are built once per worker process (a plain Celery user would build them at import
time too), which mirrors RunnableK8s's worker-side cache of loaded runnables.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from celery import Celery

from benchmarks.models import small_chain

REDIS_URL = os.environ.get("BENCHMARK_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCHMARK_BASELINE_QUEUE", "benchmark-baseline")

app = Celery("benchmarks.baseline", broker=REDIS_URL, backend=REDIS_URL, set_as_current=False)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
    worker_redirect_stdouts=False,
)


@functools.cache
def _chain(delay: float) -> Any:
    return small_chain(delay)


@app.task(name="benchmarks.chain")
def run_chain(payload: dict[str, str], delay: float = 0.0) -> str:
    """W1, W2 (delay 0) and W3 (delay 0.2 s, a blocking sleep in the pool thread, as a sync
    LLM client would): prompt | model | parser, in-process."""
    return str(_chain(delay).invoke(payload))


@app.task(name="benchmarks.echo")
def echo(payload: str) -> str:
    """W4: take a string and return it."""
    return payload
