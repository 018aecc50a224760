"""The processes the benchmark measures: one RunnableK8s worker (started by `runnable_k8s.spawn`,
as the tests and `dev` start theirs), one plain Celery worker and one LangServe server
(uvicorn), each a subprocess logging to a file, and their memory."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.sizes import REPO, BenchmarkError, Sizes
from runnable_k8s import spawn


def _rss_kb(pid: int, field_name: str = "VmRSS") -> int:
    """`field_name` of /proc/<pid>/status, in kB, summed over the process and its children
    (every pool is threads, so there are none; this guards against a prefork mistake)."""
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
    """A baseline's subprocess whose output goes to a log file; ready when `ready()` says so
    (by default: when it logs `ready.`, as plain Celery does at INFO)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_dir: Path,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._ready = ready or (lambda: "ready." in self.log())
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
                raise BenchmarkError(f"{self.name} exited early:\n{self.log()[-3000:]}")
            if self._ready():
                return
            time.sleep(0.05)
        raise BenchmarkError(f"{self.name} not ready after {timeout} s:\n{self.log()[-3000:]}")

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


class OurWorker(spawn.WorkerProcess):
    """Our worker: ready when its consumer takes messages (its ready file), with the same
    `name`, `wait_ready`, `rss_mb` and `stop` as the baselines' `Worker`."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, argv: list[str]) -> None:
        self.name = name
        super().__init__(
            env,
            heartbeat_file=log_dir / f"{name}.heartbeat",
            log=log_dir / f"{name}.log",
            argv=argv,
            cwd=REPO,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        try:
            super().wait_ready(timeout)
        except spawn.WorkerNotReady as exc:
            raise BenchmarkError(f"{self.name}: {exc}") from exc

    def rss_mb(self) -> float:
        return _rss_kb(self.pid) / 1024

    def stop(self, grace: float = 20.0) -> int:
        return super().stop(grace)


AnyWorker = Worker | OurWorker
"""A process a side measures (its RSS) and stops."""


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
    name: str = "ours",
    concurrency: int | None = None,
) -> OurWorker:
    """Our worker, `python -m <module> worker` (`benchmarks.stages` runs a stamped one)."""
    env = spawn.environment(settings.replace(log_level=loglevel), base=_base_env(), extra=extra_env)
    argv = spawn.worker_argv(
        concurrency=concurrency or sizes.concurrency,
        loglevel=loglevel,
        hostname=f"{name}-{os.getpid()}@bench",
        module=module,
    )
    return OurWorker(name, env, log_dir, argv)


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


def free_port() -> int:
    """A loopback port nobody listens on now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1.0) as response:
        return bool(response.status == 200)
    return False


def start_langserve(sizes: Sizes, log_dir: Path, loglevel: str) -> tuple[Worker, str]:
    """One uvicorn process serving `benchmarks.langserve_app` (the same chains, through
    LangServe's `add_routes`) on a free loopback port; ready when a route answers. Returns the
    process and its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _base_env()
    env["BENCHMARK_STREAM_TOKENS"] = f"{sizes.stream_tokens},{sizes.stream_chunks}"
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.langserve_app:app",
        "--host=127.0.0.1",
        f"--port={port}",
        # uvicorn's defaults otherwise (one process, its access log at INFO), as deployed.
        f"--log-level={loglevel.lower()}",
    ]
    probe = f"{url}/chain/input_schema"
    return Worker("langserve", argv, env, log_dir, ready=lambda: _answers(probe)), url
