"""Real worker processes for integration tests, started by `runnable_k8s.spawn` as `dev`, the
demo and the benchmark start theirs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from runnable_k8s import spawn
from runnable_k8s.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def cli(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m runnable_k8s ARGS` as a user runs it, with the settings in its environment."""
    return subprocess.run(
        [sys.executable, "-m", "runnable_k8s", *args],
        env=worker_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=check,
    )


def worker_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker (or a CLI command) for `settings`: every setting, no model
    API key of the machine's, this checkout importable, heartbeats every 0.5 s; then `extra`."""
    base = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    test = {"PYTHONPATH": str(REPO), "RUNNABLE_K8S_HEARTBEAT_INTERVAL": "0.5"}
    return spawn.environment(settings, base=base, extra={**test, **(extra or {})})


class WorkerProcess(spawn.WorkerProcess):
    """`runnable-k8s worker` in a subprocess, its output captured in a log file."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        *,
        concurrency: int = 16,
        env: dict[str, str] | None = None,
        name: str = "worker",
    ) -> None:
        stamp = time.monotonic_ns()
        self.hostname = f"{name}-{os.getpid()}-{stamp}@test"
        super().__init__(
            worker_env(settings, env),
            heartbeat_file=log_dir / f"{name}-{stamp}.hb",
            log=log_dir / f"{name}-{stamp}.log",
            argv=spawn.worker_argv(
                concurrency=concurrency, loglevel="INFO", hostname=self.hostname
            ),
            cwd=REPO,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        super().wait_ready(timeout)

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in worker log after {timeout} s:\n{self.log()[-3000:]}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait up to `timeout` seconds (subprocess.TimeoutExpired after)."""
        self.request_stop()
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is not None:
                self.reaped()

    def stop(self, grace: float = 15.0) -> int:
        return super().stop(grace)
