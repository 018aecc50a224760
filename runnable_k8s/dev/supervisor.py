"""Worker processes for `runnable-k8s dev`: what the Deployment, the ReplicaSet and the kubelet
do in a cluster, on one machine.

- `scale_to(n)` starts `runnable-k8s worker` processes, or stops surplus ones with SIGTERM (a
  warm shutdown: running runs finish, then the process exits), never SIGKILL unless a worker
  outlives its grace period, as the kubelet does after `terminationGracePeriodSeconds`.
- Which worker goes first follows the ReplicaSet's ranking: one waiting to be restarted, then
  one not yet ready, then the one restarted most, then the newest.
- A worker that dies without being asked (SIGKILL, OOM, crash) is restarted after a back-off,
  like a container in CrashLoopBackOff (10 s, doubling, capped at 5 minutes).
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from runnable_k8s import spawn

State = Literal["starting", "ready", "crashed", "stopping", "exited"]

_FINISHED = re.compile(rb"finished run=(\S+) .*?state=(\w+)")
_STARTED = re.compile(rb"started run=(\S+)")
_REJECTED = re.compile(rb"rejected (?:message|run)")

MAX_BACKOFF = 300.0


@dataclass
class Worker:
    """One worker slot (a pod) and its current process (a container)."""

    name: str
    log_path: Path
    heartbeat: Path
    process: spawn.WorkerProcess | None = None
    state: State = "starting"
    created_at: float = 0.0
    started_at: float = 0.0
    ready_at: float | None = None
    stop_requested_at: float | None = None
    exited_at: float | None = None
    exit_code: int | None = None
    restarts: int = 0
    restart_at: float | None = None
    log_paths: list[Path] = field(default_factory=list)
    _offset: int = 0
    _partial: bytes = b""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def rss_kib(self) -> int | None:
        """Resident memory of the worker process (VmRSS from /proc), in KiB."""
        if self.process is None or self.process.poll() is not None:
            return None
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return None


@dataclass(frozen=True, slots=True)
class PoolEvent:
    at: float
    worker: str
    what: str


class WorkerPool:
    """Starts, restarts and warm-stops `runnable-k8s worker` processes.

    Args:
        env: the workers' environment (`keda.worker_environment`).
        log_dir: one log file per worker process is written here.
        concurrency: `--concurrency` of each worker (runs held at once).
        restart_backoff: seconds before a crashed worker is restarted (doubles per restart).
        grace_period: seconds a SIGTERMed worker may take before it is SIGKILLed.
        clock: a monotonic clock (tests may pass their own).
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        *,
        concurrency: int,
        restart_backoff: float = 10.0,
        grace_period: float = 660.0,
        loglevel: str = "INFO",
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[PoolEvent], None] | None = None,
    ) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.concurrency = concurrency
        self.restart_backoff = restart_backoff
        self.grace_period = grace_period
        self.loglevel = loglevel
        self.clock = clock
        self.on_event = on_event
        self.workers: list[Worker] = []
        self.retired: list[Worker] = []
        self.events: list[PoolEvent] = []
        self.counts: Counter[str] = Counter()
        self._serial = 0
        log_dir.mkdir(parents=True, exist_ok=True)

    # -- the Deployment's view --------------------------------------------------------------

    @property
    def replicas(self) -> int:
        """Workers that count as replicas (not asked to stop)."""
        return sum(1 for w in self.workers if w.state != "stopping")

    @property
    def ready(self) -> int:
        return sum(1 for w in self.workers if w.state == "ready")

    @property
    def stopping(self) -> int:
        return sum(1 for w in self.workers if w.state == "stopping")

    def live(self) -> list[Worker]:
        """Workers with a running process (ready, starting or stopping)."""
        return [w for w in self.workers if w.process is not None and w.process.poll() is None]

    def scale_to(self, replicas: int) -> None:
        """Start or warm-stop workers until `replicas` of them count as replicas."""
        while self.replicas < replicas:
            self._create()
        surplus = self.replicas - replicas
        if surplus > 0:
            for worker in sorted(
                (w for w in self.workers if w.state != "stopping"), key=self._deletion_rank
            )[:surplus]:
                self._stop(worker)

    def _deletion_rank(self, worker: Worker) -> tuple[int, int, float]:
        order = {"crashed": 0, "starting": 1, "ready": 2}.get(worker.state, 3)
        return (order, -worker.restarts, -worker.created_at)

    # -- processes --------------------------------------------------------------------------

    def _create(self) -> Worker:
        self._serial += 1
        name = f"worker-{self._serial}"
        worker = Worker(
            name=name,
            log_path=self.log_dir / f"{name}.log",
            heartbeat=self.log_dir / f"{name}.heartbeat",
            created_at=self.clock(),
        )
        self.workers.append(worker)
        self._spawn(worker)
        return worker

    def _spawn(self, worker: Worker) -> None:
        generation = len(worker.log_paths)
        worker.log_path = self.log_dir / (
            f"{worker.name}.log" if generation == 0 else f"{worker.name}.{generation}.log"
        )
        worker.log_paths.append(worker.log_path)
        worker._offset = 0
        worker._partial = b""
        worker.process = spawn.WorkerProcess(
            self.env,
            heartbeat_file=worker.heartbeat,
            log=worker.log_path,
            argv=spawn.worker_argv(
                concurrency=self.concurrency,
                loglevel=self.loglevel,
                hostname=f"{worker.name}-{os.getpid()}@dev",
                # It stops when this process is gone, however that happens (even SIGKILL).
                parent_pid=os.getpid(),
            ),
            # The terminal's Ctrl-C reaches `dev` only, which then stops the workers warmly.
            new_session=True,
        )
        worker.state = "starting"
        worker.started_at = self.clock()
        worker.ready_at = None
        worker.restart_at = None
        self._event(worker, f"started (pid {worker.process.pid})")

    def _stop(self, worker: Worker) -> None:
        worker.stop_requested_at = self.clock()
        if worker.process is not None and worker.process.poll() is None:
            worker.state = "stopping"
            worker.process.request_stop()
            self._event(worker, "SIGTERM (warm shutdown: running runs finish first)")
        else:
            worker.state = "stopping"  # reaped (and retired) at the next poll
            self._event(worker, "removed (was not running)")

    def kill(self, worker: Worker) -> None:
        """SIGKILL a worker (for reliability tests: its runs are delivered again later)."""
        if worker.process is not None and worker.process.poll() is None:
            worker.process.kill()
            self.counts["killed"] += 1
            self._event(worker, "SIGKILL")

    def poll(self) -> None:
        """Reap exits, restart crashed workers whose back-off is over, note readiness, and
        count finished runs in the workers' logs."""
        now = self.clock()
        for worker in list(self.workers):
            self._read_log(worker)
            code = worker.process.reaped() if worker.process is not None else None
            if code is not None:
                self._exited(worker, code, now)
            if worker.state == "stopping" and (worker.process is None):
                worker.state = "exited"
                self.workers.remove(worker)
                self.retired.append(worker)
            elif worker.state == "stopping" and worker.stop_requested_at is not None:
                if now - worker.stop_requested_at > self.grace_period and worker.process:
                    worker.process.kill()
                    self._event(worker, "SIGKILL after the grace period")
            elif worker.state == "crashed" and worker.restart_at is not None:
                if now >= worker.restart_at:
                    worker.restarts += 1
                    self._spawn(worker)
            elif worker.state == "starting" and self._is_ready(worker):
                worker.state = "ready"
                worker.ready_at = now
                self._event(worker, f"ready after {now - worker.started_at:.1f} s")

    def _is_ready(self, worker: Worker) -> bool:
        # Its consumer takes messages (the worker's ready file, as the readiness probe reads).
        return worker.process is not None and worker.process.ready()

    def _exited(self, worker: Worker, code: int, now: float) -> None:
        self._read_log(worker)
        worker.exit_code = code
        worker.exited_at = now
        worker.process = None
        how = f"signal {-code}" if code < 0 else f"code {code}"
        if worker.state == "stopping":
            self._event(worker, f"exited ({how})")
            return
        backoff = min(MAX_BACKOFF, self.restart_backoff * 2 ** min(worker.restarts, 16))
        worker.state = "crashed"
        worker.restart_at = now + backoff
        self.counts["crashed"] += 1
        self._event(worker, f"died ({how}); restarting in {backoff:.0f} s")

    def _read_log(self, worker: Worker) -> None:
        try:
            with open(worker.log_path, "rb") as handle:
                handle.seek(worker._offset)
                data = handle.read()
        except OSError:
            return
        if not data:
            return
        worker._offset += len(data)
        data = worker._partial + data
        lines = data.split(b"\n")
        worker._partial = lines.pop()
        for line in lines:
            finished = _FINISHED.search(line)
            if finished:
                state = finished.group(2).decode()
                self.counts["done" if state in ("succeeded", "interrupted") else "failed"] += 1
                continue
            if _STARTED.search(line):
                self.counts["started"] += 1
            elif _REJECTED.search(line):
                self.counts["rejected"] += 1

    def stop_all(self, timeout: float | None = None) -> list[Worker]:
        """Warm-stop every worker and wait for them (SIGKILL after `timeout`, default the
        grace period). Returns the workers that had to be killed.

        Whatever goes wrong meanwhile, no worker is left running: one started late (by a
        control step still under way) is stopped too, and an error kills the rest.
        """
        deadline = self.clock() + (self.grace_period if timeout is None else timeout)
        killed = []
        try:
            while self.workers and self.clock() < deadline:
                for worker in list(self.workers):
                    if worker.state != "stopping":
                        self._stop(worker)
                self.poll()
                time.sleep(0.05)
        finally:
            for worker in list(self.workers):
                if worker.process is not None and worker.process.poll() is None:
                    worker.process.kill()
                    killed.append(worker)
                    self._event(worker, "SIGKILL: did not stop in time")
        self.poll()
        return killed

    def _event(self, worker: Worker, what: str) -> None:
        event = PoolEvent(self.clock(), worker.name, what)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
