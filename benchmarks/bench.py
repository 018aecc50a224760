"""RunnableK8s against a plain Celery baseline, interleaved, on one Redis and one machine.

    python -m benchmarks.bench                 # full sizes from the issue (a few minutes)
    python -m benchmarks.bench --quick         # smallest configuration (the CI smoke test)
    python -m benchmarks.bench --json out.json --profile prof/

Starts its own Redis-protocol server (unless `--redis-url`), one RunnableK8s worker process
(`python -m runnable_k8s worker`) and one plain Celery worker process (`celery -A
benchmarks.baseline worker`), both with the threads pool and the same concurrency, then runs
each workload for both sides in alternating order, round after round, so machine noise hits
both. Every output is checked; a wrong answer fails the run (exit status 1).

See benchmarks/README.md for what is measured and why the baseline is fair.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import json
import math
import os
import platform
import pstats
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MB = 1_000_000


@dataclass(frozen=True)
class Sizes:
    w1_invokes: int
    """W1: sequential invokes per side, in total (split over the rounds)."""
    w2_items: int
    """W2: inputs of one `batch` (every round)."""
    w3_items: int
    """W3: inputs of one `abatch` whose model awaits `w3_delay` (every round)."""
    w3_delay: float
    w4_invokes: int
    """W4: invokes with a large input and output (every round)."""
    w4_bytes: int
    rounds: int
    concurrency: int
    """Pool threads of each worker process (RunnableK8s: runs held at once)."""


FULL = Sizes(300, 2000, 400, 0.2, 50, 1 * MB, rounds=3, concurrency=100)
QUICK = Sizes(5, 50, 20, 0.2, 2, 100_000, rounds=2, concurrency=100)


class BenchmarkError(RuntimeError):
    """A workload returned a wrong answer, or a process did not start."""


# -- processes ------------------------------------------------------------------------------


def _rss_kb(pid: int, field_name: str = "VmRSS") -> int:
    """`field_name` of /proc/<pid>/status, in kB, summed over the process and its children
    (both pools are threads, so there are none; this guards against a prefork mistake)."""
    total = 0
    for one in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
    return total


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    for child in list(found):
        found += _children(child)
    return found


class PeakRss:
    """Peak RSS of a process over a `with` block: resets the kernel's high-water mark
    (`/proc/<pid>/clear_refs` = 5) and reads VmHWM after; also polls VmRSS every 5 ms as a
    cross-check (and as the figure where clear_refs is not permitted)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.polled_kb = 0
        self.hwm_kb: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.polled_kb = max(self.polled_kb, _rss_kb(self.pid))
            self._stop.wait(0.005)

    def __enter__(self) -> PeakRss:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self._reset = True
        except OSError:
            self._reset = False
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._reset:
            self.hwm_kb = _rss_kb(self.pid, "VmHWM")

    @property
    def peak_mb(self) -> float:
        return max(self.polled_kb, self.hwm_kb or 0) / 1024


class Worker:
    """A worker subprocess whose output goes to a log file; ready when it logs `ready.`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchmarkError(f"{self.name} worker exited early:\n{self.log()[-3000:]}")
            if "ready." in self.log():
                return
            time.sleep(0.05)
        raise BenchmarkError(f"{self.name} worker not ready after {timeout} s")

    def rss_mb(self) -> float:
        return _rss_kb(self.pid) / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNABLE_K8S_", "BENCHMARK_"))}
    env.pop("OPENAI_API_KEY", None)
    env["PYTHONPATH"] = str(REPO)
    return env


def our_settings(stack: contextlib.ExitStack, redis_url: str | None, name: str) -> tuple[Any, str]:
    """Settings for the RunnableK8s side: `redis_url`, or an embedded server that closes with
    `stack`; a fresh signing key; a queue of its own. Also the baseline's queue name."""
    from benchmarks.models import ALLOWED_CLASSES
    from runnable_k8s.embedded import EmbeddedRedis
    from runnable_k8s.settings import Settings, SigningKey

    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        signing_key=SigningKey(secrets.token_urlsafe(48).encode()),
        redis_url=redis_url or stack.enter_context(EmbeddedRedis()),
        queue=f"{name}-ours-{tag}",
        allowed_classes=ALLOWED_CLASSES,
        wait_timeout=600.0,
    )
    return settings, f"{name}-baseline-{tag}"


def start_ours(
    settings: Any,
    sizes: Sizes,
    log_dir: Path,
    loglevel: str,
    *,
    module: str = "runnable_k8s",
    extra_env: dict[str, str] | None = None,
) -> Worker:
    """Our worker, `python -m <module> worker` (`benchmarks.stages` runs a stamped one)."""
    env = _base_env()
    env.update(
        {
            "RUNNABLE_K8S_REDIS_URL": settings.require_redis_url(),
            "RUNNABLE_K8S_SIGNING_KEY": settings.require_signing_key().reveal().decode(),
            "RUNNABLE_K8S_QUEUE": settings.queue,
            "RUNNABLE_K8S_ALLOWED_CLASSES": ",".join(settings.allowed_classes),
            "RUNNABLE_K8S_HEARTBEAT_FILE": str(log_dir / "ours.heartbeat"),
            "RUNNABLE_K8S_LOG_LEVEL": loglevel,
            **(extra_env or {}),
        }
    )
    argv = [
        sys.executable,
        "-m",
        module,
        "worker",
        f"--concurrency={sizes.concurrency}",
        f"--loglevel={loglevel}",
        f"--hostname=ours-{os.getpid()}@bench",
    ]
    return Worker("ours", argv, env, log_dir)


def start_baseline(
    redis_url: str, queue: str, sizes: Sizes, log_dir: Path, loglevel: str
) -> Worker:
    env = _base_env()
    env.update({"BENCHMARK_REDIS_URL": redis_url, "BENCHMARK_BASELINE_QUEUE": queue})
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "benchmarks.baseline",
        "worker",
        "--pool=threads",
        f"--concurrency={sizes.concurrency}",
        f"--queues={queue}",
        f"--loglevel={loglevel}",
        # The same start-up flags as the RunnableK8s worker.
        "--without-mingle",
        "--without-gossip",
        f"--hostname=baseline-{os.getpid()}@bench",
    ]
    return Worker("baseline", argv, env, log_dir)


# -- the two sides --------------------------------------------------------------------------


def _question(i: int) -> dict[str, str]:
    return {"input": f"What does Pokemon number {i} evolve from?"}


def _payload(size: int, salt: int) -> str:
    # ASCII without characters JSON escapes, different per call (no caching anywhere).
    unit = f"{salt:08d}abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return (unit * (size // len(unit) + 1))[:size]


def _check(side: str, what: str, got: Any, want: Any) -> None:
    if got != want:
        raise BenchmarkError(
            f"{side} {what}: wrong output {str(got)[:200]!r}, want {str(want)[:200]!r}"
        )


class Side:
    name: str
    worker: Worker

    def invoke_chain(self, payload: dict[str, str]) -> str: ...
    def batch_chain(self, payloads: list[dict[str, str]]) -> list[str]: ...
    def batch_slow(self, payloads: list[dict[str, str]]) -> list[str]: ...
    def echo(self, payload: str) -> str: ...


class Ours(Side):
    name = "ours"

    def __init__(self, settings: Any, sizes: Sizes, worker: Worker) -> None:
        from benchmarks.models import EchoRunnable, small_chain
        from runnable_k8s import RunnableK8s

        self.worker = worker
        self.chain = RunnableK8s(bound=small_chain(), settings=settings)
        self.slow = RunnableK8s(bound=small_chain(sizes.w3_delay), settings=settings)
        self.echo_runnable = RunnableK8s(bound=EchoRunnable(), settings=settings)
        # One long-lived event loop, as an async application has (its connection pool stays).
        self.loop = asyncio.new_event_loop()

    def invoke_chain(self, payload: dict[str, str]) -> str:
        return self.chain.invoke(payload)

    def batch_chain(self, payloads: list[dict[str, str]]) -> list[str]:
        return self.chain.batch(payloads)

    def batch_slow(self, payloads: list[dict[str, str]]) -> list[str]:
        return self.loop.run_until_complete(self.slow.abatch(payloads))

    def echo(self, payload: str) -> str:
        return self.echo_runnable.invoke(payload)

    def close(self) -> None:
        self.loop.close()


class Baseline(Side):
    name = "baseline"

    def __init__(self, redis_url: str, queue: str, sizes: Sizes, worker: Worker) -> None:
        from benchmarks import baseline

        self.worker = worker
        self.app = baseline.app
        self.app.conf.update(
            broker_url=redis_url, result_backend=redis_url, task_default_queue=queue
        )
        self.queue = queue
        self.delay = sizes.w3_delay
        self.timeout = 600.0

    def invoke_chain(self, payload: dict[str, str]) -> str:
        from benchmarks.baseline import run_chain

        return run_chain.apply_async((payload,), queue=self.queue).get(timeout=self.timeout)

    def _many(self, payloads: list[dict[str, str]], delay: float) -> list[str]:
        # `delay` each, then `.get()` each: on Celery 5.7 this is never slower than
        # `group(...).apply_async().get()`, whose result drain adds a ~0.5 s floor (its
        # default polling interval) that would make the baseline look worse than it is.
        from benchmarks.baseline import run_chain

        sent = [run_chain.apply_async((p, delay), queue=self.queue) for p in payloads]
        return [result.get(timeout=self.timeout) for result in sent]

    def batch_chain(self, payloads: list[dict[str, str]]) -> list[str]:
        return self._many(payloads, 0.0)

    def batch_slow(self, payloads: list[dict[str, str]]) -> list[str]:
        return self._many(payloads, self.delay)

    def echo(self, payload: str) -> str:
        from benchmarks.baseline import echo

        return echo.apply_async((payload,), queue=self.queue).get(timeout=self.timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.app.close()


# -- workloads ------------------------------------------------------------------------------


@dataclass
class Results:
    w1_latencies_ms: list[float] = field(default_factory=list)
    w2_items_per_s: list[float] = field(default_factory=list)
    w3_wall_s: list[float] = field(default_factory=list)
    w4_mb_per_s: list[float] = field(default_factory=list)
    rss_idle_mb: float = 0.0
    rss_peak_w3_mb: list[float] = field(default_factory=list)
    rss_idle_end_mb: float = 0.0


def w1(side: Side, count: int, offset: int, out: Results) -> None:
    from benchmarks.models import expected

    for i in range(offset, offset + count):
        payload = _question(i)
        start = time.perf_counter()
        got = side.invoke_chain(payload)
        out.w1_latencies_ms.append((time.perf_counter() - start) * 1000)
        _check(side.name, "W1", got, expected(payload["input"]))


def w2(side: Side, items: int, out: Results) -> None:
    from benchmarks.models import expected

    payloads = [_question(i) for i in range(items)]
    start = time.perf_counter()
    got = side.batch_chain(payloads)
    out.w2_items_per_s.append(items / (time.perf_counter() - start))
    _check(side.name, "W2", got, [expected(p["input"]) for p in payloads])


def w3(side: Side, items: int, out: Results) -> None:
    from benchmarks.models import expected

    payloads = [_question(i) for i in range(items)]
    with PeakRss(side.worker.pid) as peak:
        start = time.perf_counter()
        got = side.batch_slow(payloads)
        out.w3_wall_s.append(time.perf_counter() - start)
    out.rss_peak_w3_mb.append(peak.peak_mb)
    _check(side.name, "W3", got, [expected(p["input"]) for p in payloads])


def w4(side: Side, count: int, size: int, salt: int, out: Results) -> None:
    payloads = [_payload(size, salt + i) for i in range(count)]
    start = time.perf_counter()
    for payload in payloads:
        got = side.echo(payload)
        if got != payload:  # not _check: never format a megabyte into a message
            raise BenchmarkError(f"{side.name} W4: output differs from input")
    # Each invoke carries `size` bytes to the worker and the same back: MB of input per second.
    out.w4_mb_per_s.append(count * size / MB / (time.perf_counter() - start))


def warm_up(side: Side, sizes: Sizes) -> None:
    """Load code and caches on both ends before anything is measured."""
    scratch = Results()
    w1(side, 3, 10_000, scratch)
    w2(side, 8, scratch)
    w3(side, 4, scratch)
    w4(side, 1, min(sizes.w4_bytes, 100_000), 99, scratch)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_rounds(
    sides: list[Side], sizes: Sizes, results: dict[str, Results], log: Callable[[str], None]
) -> None:
    w1_parts = _split(sizes.w1_invokes, sizes.rounds)
    w1_offset = 0
    for number in range(sizes.rounds):
        # ABAB: the side that goes first alternates every round.
        order = sides if number % 2 == 0 else list(reversed(sides))
        for side in order:
            w1(side, w1_parts[number], w1_offset, results[side.name])
        w1_offset += w1_parts[number]
        for side in order:
            w2(side, sizes.w2_items, results[side.name])
        for side in order:
            w3(side, sizes.w3_items, results[side.name])
        for side in order:
            w4(side, sizes.w4_invokes, sizes.w4_bytes, number * 1000, results[side.name])
        log(f"round {number + 1}/{sizes.rounds} done ({' then '.join(s.name for s in order)})")


# -- report ---------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Row:
    figure: str
    ours: float
    baseline: float
    unit: str
    target: str
    met: bool | None
    spread: str = ""
    """The lowest and highest ratio of single rounds (each round measures both sides)."""

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("nan")


def _spread(ours: list[float], base: list[float]) -> str:
    ratios = [r for o, b in zip(ours, base, strict=True) if b and not math.isnan(r := o / b)]
    return f"{min(ratios):.2f}x to {max(ratios):.2f}x" if len(ratios) > 1 else ""


def _round_p50s(latencies: list[float], sizes: Sizes) -> list[float]:
    """W1's p50 of each round (the pooled samples are in round order)."""
    p50s, start = [], 0
    for part in _split(sizes.w1_invokes, sizes.rounds):
        p50s.append(_pct(latencies[start : start + part], 0.5))
        start += part
    return p50s


def figures(sizes: Sizes, ours: Results, base: Results) -> list[Row]:
    med = statistics.median
    rows: list[Row] = []
    p50 = (_pct(ours.w1_latencies_ms, 0.5), _pct(base.w1_latencies_ms, 0.5))
    p99 = (_pct(ours.w1_latencies_ms, 0.99), _pct(base.w1_latencies_ms, 0.99))
    rows.append(
        Row(
            f"W1 latency p50 ({sizes.w1_invokes} invokes)",
            *p50,
            "ms",
            "<= 0.6x",
            p50[0] <= 0.6 * p50[1],
            _spread(
                _round_p50s(ours.w1_latencies_ms, sizes), _round_p50s(base.w1_latencies_ms, sizes)
            ),
        )
    )
    rows.append(Row("W1 latency p99", *p99, "ms", "", None))
    w2v = (med(ours.w2_items_per_s), med(base.w2_items_per_s))
    rows.append(
        Row(
            f"W2 batch of {sizes.w2_items}",
            *w2v,
            "items/s",
            ">= 2.5x",
            w2v[0] >= 2.5 * w2v[1],
            _spread(ours.w2_items_per_s, base.w2_items_per_s),
        )
    )
    w3v = (med(ours.w3_wall_s), med(base.w3_wall_s))
    rows.append(
        Row(
            f"W3 abatch {sizes.w3_items} x {sizes.w3_delay * 1000:.0f} ms, wall",
            *w3v,
            "s",
            "<= 0.5 s and <= 1/2.4x",
            w3v[0] <= 0.5 and w3v[0] * 2.4 <= w3v[1],
            _spread(ours.w3_wall_s, base.w3_wall_s),
        )
    )
    w4v = (med(ours.w4_mb_per_s), med(base.w4_mb_per_s))
    rows.append(
        Row(
            f"W4 {sizes.w4_invokes} invokes of {sizes.w4_bytes / MB:g} MB in+out",
            *w4v,
            "MB/s",
            ">= 4x",
            w4v[0] >= 4 * w4v[1],
            _spread(ours.w4_mb_per_s, base.w4_mb_per_s),
        )
    )
    rows.append(
        Row(
            "worker RSS idle (after warm-up)",
            ours.rss_idle_mb,
            base.rss_idle_mb,
            "MB",
            "<= 150 MB",
            ours.rss_idle_mb <= 150,
        )
    )
    peak = (max(ours.rss_peak_w3_mb), max(base.rss_peak_w3_mb))
    rows.append(
        Row(
            f"worker RSS peak, {sizes.w3_items} runs in flight (W3)",
            *peak,
            "MB",
            "<= 250 MB",
            peak[0] <= 250,
        )
    )
    rows.append(
        Row(
            "worker RSS idle at the end", ours.rss_idle_end_mb, base.rss_idle_end_mb, "MB", "", None
        )
    )
    return rows


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value < 1 else f"{value:.2f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| figure | RunnableK8s | plain Celery | ratio | ratio per round | target | met |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.figure} | {_fmt(row.ours)} {row.unit} | {_fmt(row.baseline)} {row.unit} "
            f"| {row.ratio:.2f}x | {row.spread} | {row.target} | {met} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for name in ("runnable-k8s", "celery", "kombu", "redis", "langchain-core"):
        with contextlib.suppress(Exception):
            out[name] = version(name)
    return out


# -- profiling ------------------------------------------------------------------------------


@contextlib.contextmanager
def py_spy(pid: int, out: Path, rate: int = 200) -> Iterator[None]:
    """Sample `pid` with py-spy (collapsed stacks) while the block runs, if py-spy is there."""
    exe = Path(sys.executable).with_name("py-spy")
    command = str(exe) if exe.exists() else "py-spy"
    try:
        spy = subprocess.Popen(
            [
                command,
                "record",
                "-p",
                str(pid),
                "-f",
                "raw",
                "-r",
                str(rate),
                "--nonblocking",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except OSError:
        yield
        return
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if not out.exists():
            print(
                f"py-spy wrote nothing for pid {pid}: {err.decode(errors='replace')[-500:]}",
                file=sys.stderr,
            )


def _commandstats(client: Any) -> dict[str, int]:
    return {
        k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items()
    }


def profile(
    sides: list[Side], sizes: Sizes, directory: Path, redis_url: str, log: Callable[[str], None]
) -> None:
    """Profile W1 to W4 on each side: the producer in-process with cProfile, the worker with
    py-spy, and Redis commands per item (INFO commandstats). Writes .pstats, .txt summaries and
    collapsed stacks (for flamegraphs)."""
    import redis

    from benchmarks.profiling import summarize_collapsed

    directory.mkdir(parents=True, exist_ok=True)
    jobs: dict[str, tuple[int, Callable[[Side], None]]] = {
        "w1": (sizes.w1_invokes, lambda side: w1(side, sizes.w1_invokes, 50_000, Results())),
        "w2": (sizes.w2_items, lambda side: w2(side, sizes.w2_items, Results())),
        "w3": (sizes.w3_items, lambda side: w3(side, sizes.w3_items, Results())),
        "w4": (
            sizes.w4_invokes,
            lambda side: w4(side, sizes.w4_invokes, sizes.w4_bytes, 7, Results()),
        ),
    }
    client = redis.Redis.from_url(redis_url)
    for side in sides:
        for name, (items, job) in jobs.items():
            stem = directory / f"{side.name}-{name}"
            profiler = cProfile.Profile()
            with py_spy(side.worker.pid, stem.with_suffix(".worker.collapsed")):
                before = _commandstats(client)
                start = time.perf_counter()
                profiler.enable()
                job(side)
                profiler.disable()
                wall = time.perf_counter() - start
                after = _commandstats(client)
            calls = {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}
            calls["info"] = calls.get("info", 0) - 1
            per_item = sorted(((n / items, k) for k, n in calls.items() if n > 0), reverse=True)
            stem.with_suffix(".redis.txt").write_text(
                f"{side.name} {name}: Redis commands per item ({items} items, both workers' idle "
                f"polling included), {sum(n for n, _ in per_item):.1f} in all\n"
                + "".join(f"  {n:8.2f}  {k}\n" for n, k in per_item)
            )
            profiler.dump_stats(stem.with_suffix(".producer.pstats"))
            with open(stem.with_suffix(".producer.txt"), "w") as text:
                text.write(f"{side.name} {name}: producer wall {wall:.3f} s (under cProfile)\n\n")
                stats = pstats.Stats(profiler, stream=text).strip_dirs()
                stats.sort_stats("cumulative").print_stats(40)
                stats.sort_stats("tottime").print_stats(30)
            collapsed = stem.with_suffix(".worker.collapsed")
            if collapsed.exists():
                stem.with_suffix(".worker.txt").write_text(
                    summarize_collapsed(collapsed.read_text())
                )
            log(f"profiled {side.name} {name} ({wall:.2f} s) -> {stem}.*")


# -- main -----------------------------------------------------------------------------------


def measure(
    sides: list[Side], sizes: Sizes, log: Callable[[str], None]
) -> tuple[dict[str, Results], float]:
    """Warm up, read idle RSS, run the interleaved rounds, read idle RSS again."""
    results = {side.name: Results() for side in sides}
    for side in sides:
        warm_up(side, sizes)
    time.sleep(0.5)
    for side in sides:
        results[side.name].rss_idle_mb = side.worker.rss_mb()
    log(f"warmed up; {sizes.rounds} interleaved rounds")
    started = time.perf_counter()
    run_rounds(sides, sizes, results, log)
    elapsed = time.perf_counter() - started
    time.sleep(0.5)
    for side in sides:
        results[side.name].rss_idle_end_mb = side.worker.rss_mb()
    return results, elapsed


def report(
    args: argparse.Namespace,
    sizes: Sizes,
    results: dict[str, Results],
    elapsed: float,
    log: Callable[[str], None],
) -> None:
    """Print the table (stdout) and write the JSON report if asked."""
    rows = figures(sizes, results["ours"], results["baseline"])
    info = machine()
    configuration = "quick" if args.quick else "full"
    load = info["load_average"][0]
    print(f"\nrunnable-k8s benchmark, {configuration} configuration, {info['date']}")
    print(f"machine: {info['cpus']} CPUs, {info['cpu']}, load average {load:.2f}, ", end="")
    print(f"Python {info['python']}")
    print(f"rounds: {sizes.rounds} interleaved, measured in {elapsed:.1f} s; ", end="")
    print("ratio = RunnableK8s / plain Celery\n")
    print(table(rows))
    if args.json:
        data = {
            "configuration": configuration,
            "sizes": asdict(sizes),
            "machine": info,
            "versions": _versions(),
            "figures": [{**asdict(r), "ratio": r.ratio} for r in rows],
            "samples": {name: asdict(r) for name, r in results.items()},
            "all_met": all(r.met for r in rows if r.met is not None),
        }
        args.json.write_text(json.dumps(data, indent=2))
        log(f"wrote {args.json}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="smallest configuration (CI smoke test)"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 2)")
    parser.add_argument("--concurrency", type=int, help="pool threads per worker (default 100)")
    parser.add_argument("--json", type=Path, help="also write every figure and sample here")
    parser.add_argument("--redis-url", help="use this Redis instead of starting an embedded one")
    parser.add_argument("--loglevel", default="INFO", help="both workers' log level (default INFO)")
    parser.add_argument("--log-dir", type=Path, help="keep worker logs here (default: a temp dir)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="after the rounds, profile each workload into DIR (needs py-spy for workers)",
    )
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    changes = {k: v for k, v in (("rounds", args.rounds), ("concurrency", args.concurrency)) if v}
    sizes = Sizes(**{**asdict(sizes), **changes})

    def log(message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        log_dir = args.log_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="rk8s-bench-"))
        )
        log_dir.mkdir(parents=True, exist_ok=True)
        settings, base_queue = our_settings(stack, args.redis_url, "bench")
        redis_url = settings.require_redis_url()
        log(f"redis {redis_url.split('@')[-1]}; starting workers (concurrency {sizes.concurrency})")
        ours_worker = start_ours(settings, sizes, log_dir, args.loglevel)
        stack.callback(ours_worker.stop)
        base_worker = start_baseline(redis_url, base_queue, sizes, log_dir, args.loglevel)
        stack.callback(base_worker.stop)
        ours_worker.wait_ready()
        base_worker.wait_ready()

        ours = Ours(settings, sizes, ours_worker)
        stack.callback(ours.close)
        base = Baseline(redis_url, base_queue, sizes, base_worker)
        stack.callback(base.close)
        sides: list[Side] = [base, ours]
        results, elapsed = measure(sides, sizes, log)
        report(args, sizes, results, elapsed, log)
        if args.profile:
            profile(sides, sizes, args.profile, redis_url, log)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
