"""Starting a worker process: the one way `runnable-k8s demo`, `runnable-k8s dev`, the tests
and the benchmark start `runnable-k8s worker`.

- Its environment is the parent's minus every `RUNNABLE_K8S_*` variable, then every setting
  (`Settings.to_env()`), then the caller's `extra`: the child reads back exactly the settings it
  was given, never a stray variable of the shell that started the parent.
- It is ready when its ready file exists (`<heartbeat file>.ready`, see worker/health.py):
  written once its consumer takes messages, removed when it stops. No log text is read.
- It stops as a pod does: SIGTERM (a warm shutdown: running runs finish, a fetch in flight goes
  back to the queue), then SIGKILL once the grace period is over.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from runnable_k8s.errors import RunnableK8sError
from runnable_k8s.settings import ENV_PREFIX, Settings
from runnable_k8s.worker.health import ready_file


class WorkerNotReady(RunnableK8sError):
    """A worker process exited, or did not take messages within the time allowed; the message
    ends with the tail of its log when there is one."""


def environment(
    settings: Settings,
    *,
    base: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a worker configured by `settings`.

    Args:
        settings: every field becomes its `RUNNABLE_K8S_*` variable (signing key included:
            hand the result to a child process only).
        base: what the child inherits otherwise (PATH, model API keys, ...); this process's
            environment when None. Its `RUNNABLE_K8S_*` variables are dropped.
        extra: set last, as given (tests shorten intervals here).
    """
    # Passed through, not read as configuration: Settings.from_env stays the only reader.
    inherited = os.environ if base is None else base
    env = {k: v for k, v in inherited.items() if not k.startswith(ENV_PREFIX)}
    env.update(settings.to_env())
    env.update(extra or {})
    return env


def worker_argv(
    *,
    concurrency: int | None = None,
    loglevel: str | None = None,
    hostname: str | None = None,
    parent_pid: int | None = None,
    module: str = "runnable_k8s",
) -> list[str]:
    """`python -m <module> worker` with these options (None: the worker's settings decide)."""
    argv = [sys.executable, "-m", module, "worker"]
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    if loglevel is not None:
        argv.append(f"--loglevel={loglevel}")
    if hostname is not None:
        argv.append(f"--hostname={hostname}")
    if parent_pid is not None:
        # It stops when that process is gone, however that happens (even SIGKILL).
        argv.append(f"--parent-pid={parent_pid}")
    return argv


class WorkerProcess:
    """`runnable-k8s worker` in a child process.

    Args:
        env: its whole environment (see `environment`); `RUNNABLE_K8S_HEARTBEAT_FILE` is set
            to `heartbeat_file` over it, so the ready file watched is the one it writes.
        heartbeat_file: its liveness file; the ready file is beside it. None: one in a
            private temporary folder, removed by `stop`.
        log: where its output goes (truncated first); None discards it.
        argv: the command (default `worker_argv()`).
        cwd: its working directory.
        new_session: its own session and process group, so a terminal's Ctrl-C reaches only
            the parent, which then stops it warmly itself.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        heartbeat_file: Path | str | None = None,
        log: Path | None = None,
        argv: list[str] | None = None,
        cwd: Path | str | None = None,
        new_session: bool = False,
    ) -> None:
        self._own_dir: str | None = None
        if heartbeat_file is None:
            self._own_dir = tempfile.mkdtemp(prefix="rk8s-worker-")
            heartbeat_file = Path(self._own_dir) / "heartbeat"
        self.heartbeat = Path(heartbeat_file)
        self.ready_path = Path(ready_file(str(self.heartbeat)))
        # A file a previous process left would read as ready before this one consumes (the
        # worker removes it too, but only once it has started).
        self.ready_path.unlink(missing_ok=True)
        self.log_path = log
        self._log: IO[bytes] | None = open(log, "wb") if log else None  # noqa: SIM115 (closed in _closed)
        full_env = dict(env)
        full_env[ENV_PREFIX + "HEARTBEAT_FILE"] = str(self.heartbeat)
        try:
            self.process = subprocess.Popen(
                argv or worker_argv(),
                env=full_env,
                cwd=cwd,
                stdout=self._log or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=new_session,
            )
        except BaseException:
            self._closed()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        """Its exit code, or None while it runs."""
        return self.process.poll()

    def ready(self) -> bool:
        """Whether it runs and its consumer takes messages (its ready file exists)."""
        return self.process.poll() is None and self.ready_path.exists()

    def log(self) -> str:
        """Its output so far ("" when discarded)."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until it takes messages.

        Raises:
            WorkerNotReady: it exited first, or `timeout` seconds passed.
        """
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise WorkerNotReady(
                    f"worker exited ({self.process.returncode}) before it was ready{self._tail()}"
                )
            if time.monotonic() >= deadline:
                raise WorkerNotReady(f"worker not ready after {timeout} s{self._tail()}")
            time.sleep(0.05)

    def request_stop(self) -> None:
        """Send SIGTERM (a warm shutdown) and return at once."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL it (its runs are delivered again later) and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._closed()

    def stop(self, grace: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it still runs after `grace` seconds. Returns its exit code
        (negative: the signal that ended it)."""
        self.request_stop()
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._closed()
        return self.process.returncode

    def reaped(self) -> int | None:
        """Its exit code once it has exited (its log closed, its own files removed), else
        None: for callers that poll instead of waiting in `stop`."""
        code = self.process.poll()
        if code is not None:
            self._closed()
        return code

    def _closed(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    def _tail(self) -> str:
        text = self.log()
        return f":\n{text[-3000:]}" if text else ""
