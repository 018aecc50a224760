"""Flow control at the issue's scale: a provider that allows 120 requests per minute (429 above
it), three workers sharing the limit through Redis, 300 runs of one model call each.

    python -m benchmarks.limits                  # the issue's scenario (about 3 minutes)
    python -m benchmarks.limits --runs 60 --rpm 60 --period 10   # a quick look

Prints the answers of 429, the requests in each full window from the first call (the achieved
rate against the limit), the busiest sliding window, and whether every run succeeded. Exits 1
when a 429 came back or a run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path

from langchain_core.output_parsers import StrOutputParser
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from runnable_k8s import RunnableK8s, Settings
from runnable_k8s.embedded import EmbeddedRedis
from runnable_k8s.settings import SigningKey
from tests.support.limited_openai import LimitedOpenAI
from tests.support.workers import WorkerProcess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rpm", type=int, default=120, help="requests allowed per period")
    parser.add_argument("--period", type=float, default=60.0, help="seconds")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.05, help="the provider's latency, s")
    args = parser.parse_args(argv)
    name = f"gpt-bench-{uuid.uuid4().hex[:6]}"
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(EmbeddedRedis())
        fake = stack.enter_context(
            LimitedOpenAI(requests=args.rpm, period=args.period, delay=args.delay)
        )
        settings = Settings(
            signing_key=SigningKey(secrets.token_urlsafe(48).encode()),
            redis_url=url,
            queue=f"bench-limits-{uuid.uuid4().hex[:6]}",
            wait_timeout=3600.0,
        )
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rk8s-limits-")))
        env = {
            "OPENAI_API_KEY": "sk-bench-" + secrets.token_hex(8),
            "OPENAI_BASE_URL": fake.url,
            "RUNNABLE_K8S_LIMITS": f"openai:{name} requests={args.rpm}/{args.period:g}s",
        }
        workers = []
        for index in range(args.workers):
            worker = WorkerProcess(settings, logs, concurrency=50, env=env, name=f"w{index}")
            stack.callback(worker.stop)
            workers.append(worker)
        for worker in workers:
            worker.wait_ready(120)
        remote = RunnableK8s(
            bound=ChatOpenAI(model=name, api_key=SecretStr("sk-placeholder")) | StrOutputParser(),
            settings=settings,
        )
        started = time.monotonic()
        runs = [remote.submit(f"question {i}") for i in range(args.runs)]
        failed = 0
        for run in runs:
            try:
                run.result(timeout=3600)
            except Exception as exc:  # counted and shown: the benchmark reports, never hides
                failed += 1
                print(f"run {run.id} failed: {exc}", file=sys.stderr)
        elapsed = time.monotonic() - started
        served = fake.served()
        refused = fake.refused()
        first = served[0].at if served else 0.0
        windows = []
        while served and first + args.period * (len(windows) + 1) <= served[-1].at:
            low = first + args.period * len(windows)
            windows.append(sum(1 for a in served if low <= a.at < low + args.period))
        busiest = fake.max_in_window(args.period)
        print(f"limit: {args.rpm} requests per {args.period:g} s; {args.workers} workers")
        print(f"runs: {args.runs} in {elapsed:.1f} s; succeeded {args.runs - failed}")
        print(f"answers of 429: {len(refused)}")
        for index, count in enumerate(windows):
            share = 100 * count / args.rpm
            print(f"window {index + 1}: {count} requests ({share:.1f} % of the limit)")
        print(f"busiest sliding window: {busiest} requests")
        return 0 if not refused and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
