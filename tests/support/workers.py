"""Real worker processes for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNABLE_K8S_")}
    env.pop("OPENAI_API_KEY", None)
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "RUNNABLE_K8S_REDIS_URL": settings.require_redis_url(),
            "RUNNABLE_K8S_SIGNING_KEY": settings.require_signing_key().reveal().decode(),
            "RUNNABLE_K8S_QUEUE": settings.queue,
            "RUNNABLE_K8S_ALLOWED_CLASSES": ",".join(settings.allowed_classes),
            "RUNNABLE_K8S_ALLOWED_REFS": ",".join(settings.allowed_refs),
            "RUNNABLE_K8S_MAX_BODY_BYTES": str(settings.max_body_bytes),
            "RUNNABLE_K8S_TIME_LIMIT": str(settings.time_limit),
            "RUNNABLE_K8S_HEARTBEAT_INTERVAL": "0.5",
            "RUNNABLE_K8S_RETRY_ON": ",".join(settings.retry_on),
            "RUNNABLE_K8S_RETRY_BACKOFF": str(settings.retry_backoff),
            "RUNNABLE_K8S_MAX_ATTEMPTS": str(settings.max_attempts),
            "RUNNABLE_K8S_RESULT_TTL": str(settings.result_ttl),
            "RUNNABLE_K8S_DEAD_LETTER_TTL": str(settings.dead_letter_ttl),
            "RUNNABLE_K8S_RUN_EXPIRY": str(settings.run_expiry),
            "RUNNABLE_K8S_LEASE": str(settings.lease),
            "RUNNABLE_K8S_RESCUE_AFTER": str(settings.rescue_after),
        }
    )
    env.update(extra or {})
    return env


class WorkerProcess:
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
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self.heartbeat = log_dir / f"{name}-{time.monotonic_ns()}.hb"
        self.hostname = f"{name}-{os.getpid()}-{time.monotonic_ns()}@test"
        extra = {"RUNNABLE_K8S_HEARTBEAT_FILE": str(self.heartbeat), **(env or {})}
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runnable_k8s",
                "worker",
                f"--concurrency={concurrency}",
                "--loglevel=INFO",
                f"--hostname={self.hostname}",
            ],
            env=worker_env(settings, extra),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if "ready." in self.log():
                return
            time.sleep(0.05)
        raise RuntimeError(f"worker not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in worker log after {timeout} s:\n{self.log()[-3000:]}")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()

    def stop(self) -> None:
        try:
            self.terminate(15)
        except subprocess.TimeoutExpired:
            self.kill()
