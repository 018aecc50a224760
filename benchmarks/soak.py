"""Soak: N runs through the `dev` autoscaler while workers are SIGKILLed at random.

    PYTHONPATH=. python -m benchmarks.soak --runs 10000

Runs go in waves (the autoscaler scales out, then back to zero between waves). A few runs are
meant to fail (a per-call time limit below their duration). At the end every run is checked in
Redis: exactly one signed outcome in its event stream (succeeded, or failed with a reason), none
missing. It prints the figures: runs, lost, duplicates, kills survived, peak replicas, time to
scale out and back to zero, worker memory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks.models import ALLOWED_CLASSES, EchoChatModel
from runnable_k8s import RunnableK8s
from runnable_k8s.dev.scaling import Policy, Rules, ScalingConfig
from runnable_k8s.dev.session import DevSession
from runnable_k8s.embedded import EmbeddedRedis
from runnable_k8s.errors import BrokerUnavailable
from runnable_k8s.protocol.messages import Protocol
from runnable_k8s.settings import Settings, SigningKey
from runnable_k8s.store import keys

REPO = Path(__file__).resolve().parents[1]
DELAYS = (0.0, 0.05, 0.2, 0.5)
_STARTED = re.compile(r"started run=(\w+) ")


@dataclass
class SoakReport:
    runs: int = 0
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    kills: int = 0
    reexecuted: int = 0
    peak_replicas: int = 0
    scale_out_s: list[float] = field(default_factory=list)
    to_zero_s: list[float] = field(default_factory=list)
    worker_rss_mib: float = 0.0
    worker_rss_runs: int = 0
    peak_rss_mib: float = 0.0
    duration_s: float = 0.0
    submit_errors: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.unexpected)

    def lines(self) -> list[str]:
        failed = ", ".join(f"{n} {r}" for r, n in sorted(self.failed.items())) or "0"
        return [
            f"runs                {self.runs} in {self.duration_s:.0f} s "
            f"({self.runs / max(self.duration_s, 1e-9):.0f}/s overall)",
            f"succeeded           {self.succeeded}",
            f"failed (reason)     {failed} (all intended: per-call time limit)"
            if not self.unexpected
            else f"failed (reason)     {failed}; UNEXPECTED: {self.unexpected[:5]}",
            f"lost                {len(self.lost)}",
            f"returned twice      {len(self.duplicates)}",
            f"workers SIGKILLed   {self.kills}; runs re-executed after a kill: {self.reexecuted}"
            " (each still returned once)",
            f"peak replicas       {self.peak_replicas}",
            "time to scale out   "
            + ", ".join(f"{s:.1f} s" for s in self.scale_out_s)
            + " (first submission -> peak replicas, per wave)",
            "back to zero        "
            + ", ".join(f"{s:.1f} s" for s in self.to_zero_s)
            + " (last outcome -> no worker process left, per wave)",
            f"worker memory       {self.worker_rss_mib:.0f} MiB RSS after {self.worker_rss_runs}"
            f" runs (busiest worker, last sample); peak of any worker {self.peak_rss_mib:.0f} MiB",
        ]


def scaling_for(queue: str, *, max_replicas: int, target: int, polling: float) -> ScalingConfig:
    """The ScaledObject's rules with seconds instead of minutes."""
    return ScalingConfig(
        polling_interval=polling,
        cooldown=3.0,
        min_replicas=0,
        max_replicas=max_replicas,
        target=target,
        # The three triggers of k8s/base/scaledobject.yaml.
        triggers={"queued": queue, "inflight": keys.UNACKED, "pending": keys.pending(queue)},
        formula=("queued", "inflight", "pending"),
        divisors={"pending": 100},
        scale_up=Rules(0.0, (Policy("Percent", 100, 2.0), Policy("Pods", 4, 2.0)), "Max"),
        scale_down=Rules(3.0, (Policy("Pods", 1, 1.0),), "Min"),
        source="soak",
    )


def run_soak(  # noqa: PLR0915 (one scenario, read top to bottom)
    runs: int,
    *,
    redis_url: str | None = None,
    waves: int = 2,
    max_replicas: int = 4,
    target: int = 25,
    kill_every: float = 4.0,
    fail_share: float = 0.02,
    polling: float = 0.5,
    time_limit: float = 5.0,
    visibility: float = 6.0,
    log_dir: Path | None = None,
    deadline_s: float = 900.0,
    out: Any = None,
    seed: int | None = None,
) -> SoakReport:
    """Run the soak and return its figures (see the module docstring)."""
    rng = random.Random(seed)

    def say(text: str) -> None:
        if out is not None:
            print(text, file=out, flush=True)

    report = SoakReport(runs=runs)
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            server = stack.enter_context(contextlib.closing(EmbeddedRedis()))
            redis_url = server.start()
        if log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rk8s-soak-")))
        settings = Settings(
            redis_url=redis_url,
            signing_key=SigningKey(secrets.token_urlsafe(48).encode()),
            queue=f"soak-{secrets.token_hex(4)}",
            allowed_classes=ALLOWED_CLASSES,
            time_limit=time_limit,
            wait_timeout=60.0,
        )
        extra = {
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "RUNNABLE_K8S_ALLOWED_CLASSES": ",".join(ALLOWED_CLASSES),
            "RUNNABLE_K8S_TIME_LIMIT": str(time_limit),
            "RUNNABLE_K8S_VISIBILITY_TIMEOUT": str(visibility),
            "RUNNABLE_K8S_HEARTBEAT_INTERVAL": "1",
            # A message kombu lost (worker killed between BRPOP and its unacked record) is
            # neither queued nor in flight; the pending trigger keeps a worker up until its
            # rescue sweep puts it back, after rescue_after. The default 60 s would hold a
            # wave's last run that long: 1 s keeps the soak short.
            "RUNNABLE_K8S_RESCUE_AFTER": "1",
            "RUNNABLE_K8S_LOG_LEVEL": "INFO",
        }
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNABLE_K8S_")}
        base_env.pop("OPENAI_API_KEY", None)
        session = DevSession(
            settings,
            scaling_for(settings.queue, max_replicas=max_replicas, target=target, polling=polling),
            log_dir,
            base_env=base_env,
            extra_env=extra,
            # A replacement starts after the visibility timeout, so its start-up sweep hands
            # back the killed worker's runs (kombu restores only messages older than that).
            restart_backoff=visibility + 1.0,
            grace_period=time_limit + 10.0,
        )
        client = redis.Redis.from_url(redis_url)
        stack.callback(client.close)
        remotes = [RunnableK8s(bound=EchoChatModel(delay=d), settings=settings) for d in DELAYS]
        doomed = RunnableK8s(bound=EchoChatModel(delay=2.0), settings=settings, time_limit=0.2)
        intended_fail: set[str] = set()
        ids: list[str] = []
        rss: dict[Path, float] = {}
        stop_killing = threading.Event()
        started = time.monotonic()

        def killer() -> None:
            while not stop_killing.wait(rng.uniform(0.5, 1.5) * kill_every):
                ready = [w for w in session.pool.live() if w.state == "ready"]
                if ready:
                    victim = rng.choice(ready)
                    session.pool.kill(victim)
                    report.kills += 1
                    say(f"  killed {victim.name}")

        def sample_memory() -> None:
            for worker in session.pool.live():
                kib = worker.rss_kib()
                if kib is not None:
                    rss[worker.log_path] = kib / 1024
                    report.peak_rss_mib = max(report.peak_rss_mib, kib / 1024)

        with session:
            threading.Thread(target=killer, daemon=True).start()
            per_wave = [runs // waves + (1 if i < runs % waves else 0) for i in range(waves)]
            for number, count in enumerate(per_wave, 1):
                say(f"wave {number}: submitting {count} runs")
                wave_start = time.monotonic()
                wave_ids = []
                for index in range(count):
                    text = f"run {number}.{index}"
                    try:
                        if rng.random() < fail_share:
                            handle = doomed.submit(text)
                            intended_fail.add(handle.id)
                        else:
                            handle = remotes[rng.randrange(len(remotes))].submit(text)
                    except BrokerUnavailable:
                        report.submit_errors += 1
                        continue
                    wave_ids.append(handle.id)
                ids.extend(wave_ids)
                pending = set(wave_ids)
                last_outcome = time.monotonic()
                while pending and time.monotonic() - started < deadline_s:
                    done = _finished(client, pending)
                    if done:
                        last_outcome = time.monotonic()
                    pending -= done
                    sample_memory()
                    time.sleep(0.5)
                samples = [s for s in session.controller.samples if s.at >= wave_start]
                if samples:
                    peak = max(s.replicas for s in samples)
                    report.peak_replicas = max(report.peak_replicas, peak)
                    reached = next(s.at for s in samples if s.replicas == peak)
                    report.scale_out_s.append(reached - wave_start)
                say(f"wave {number}: {len(wave_ids) - len(pending)} done; waiting for zero")
                if number == len(per_wave):
                    stop_killing.set()
                wait_start = time.monotonic()
                while session.pool.workers and time.monotonic() - wait_start < 120:
                    sample_memory()
                    time.sleep(0.2)
                report.to_zero_s.append(time.monotonic() - last_outcome)
            stop_killing.set()
        report.duration_s = time.monotonic() - started
        _account(report, client, Protocol(settings), ids, intended_fail)
        report.reexecuted = _reexecuted(log_dir, set(ids))
        busiest = _busiest_worker(rss)
        if busiest:
            report.worker_rss_mib, report.worker_rss_runs = busiest
    return report


def _finished(client: redis.Redis, pending: set[str]) -> set[str]:
    """Runs of `pending` whose event stream holds an entry (their outcome: no streaming)."""
    batch = list(pending)
    with client.pipeline(transaction=False) as pipe:
        for run_id in batch:
            pipe.exists(keys.events(run_id))
        found = pipe.execute()
    return {run_id for run_id, there in zip(batch, found, strict=True) if there}


def _account(
    report: SoakReport,
    client: redis.Redis,
    protocol: Protocol,
    ids: list[str],
    intended_fail: set[str],
) -> None:
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        with client.pipeline(transaction=False) as pipe:
            for run_id in chunk:
                pipe.xrange(keys.events(run_id))
            streams = pipe.execute()
        for run_id, entries in zip(chunk, streams, strict=True):
            results = [f for _, f in entries if f.get(b"k") == b"r"]
            if not results:
                report.lost.append(run_id)
                continue
            if len(results) > 1:
                report.duplicates.append(run_id)
            outcome = protocol.open_outcome(results[0][b"m"], run_id)
            if outcome.state == "succeeded":
                report.succeeded += 1
                if run_id in intended_fail:
                    report.unexpected.append(f"{run_id}: succeeded")
            else:
                reason = outcome.reason or (outcome.error.type if outcome.error else "?")
                report.failed[reason] += 1
                if run_id not in intended_fail or not reason:
                    report.unexpected.append(f"{run_id}: {outcome.state} {reason}")
    report.runs = len(ids)


def _reexecuted(log_dir: Path, ids: set[str]) -> int:
    starts: Counter[str] = Counter()
    for path in log_dir.glob("*.log"):
        for match in _STARTED.finditer(path.read_text(errors="replace")):
            if match.group(1) in ids:
                starts[match.group(1)] += 1
    return sum(1 for n in starts.values() if n > 1)


def _busiest_worker(rss: dict[Path, float]) -> tuple[float, int] | None:
    """(last RSS sample in MiB, runs finished) of the worker process that served most runs."""
    served = {
        path: path.read_text(errors="replace").count("finished run=")
        for path in rss
        if path.exists()
    }
    if not served:
        return None
    path = max(served, key=lambda p: served[p])
    return rss[path], served[path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--max-replicas", type=int, default=4)
    parser.add_argument("--target", type=int, default=25, help="runs per worker")
    parser.add_argument("--kill-every", type=float, default=5.0, help="mean seconds")
    parser.add_argument("--redis-url", default=None, help="default: an embedded server")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    report = run_soak(
        args.runs,
        redis_url=args.redis_url,
        waves=args.waves,
        max_replicas=args.max_replicas,
        target=args.target,
        kill_every=args.kill_every,
        out=sys.stdout,
        seed=args.seed,
    )
    print("\n".join(report.lines()))
    print("OK: every run accounted for exactly once" if report.ok else "FAILED")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
