"""The LangServe baseline's server: the benchmark's chains behind LangServe's `add_routes`, for
one uvicorn process (the benchmark starts it itself):

    BENCHMARK_STREAM_TOKENS=2000,200 PYTHONPATH=. \
        uvicorn benchmarks.langserve_app:app --host 127.0.0.1 --port 8000

Routes: `/chain` (W1's `prompt | EchoChatModel | parser`) and `/tokens<N>` for each N of
`BENCHMARK_STREAM_TOKENS` (`prompt | TokenStreamModel(tokens=N) | parser`, the streaming
workloads), the chains RunnableK8s sends to its worker and the benchmark runs in-process.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from langserve import add_routes

from benchmarks.models import small_chain, token_chain

TOKENS = [int(n) for n in os.environ.get("BENCHMARK_STREAM_TOKENS", "2000,200").split(",") if n]

app = FastAPI(title="runnable-k8s benchmark: LangServe baseline")
add_routes(app, small_chain(), path="/chain")
for count in sorted(set(TOKENS)):
    add_routes(app, token_chain(count), path=f"/tokens{count}")
