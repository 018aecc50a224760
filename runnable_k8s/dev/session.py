"""A running autoscaled worker pool: the controller loop in a thread, and a clean way out.

Used by `runnable-k8s dev`, the reliability tests and `benchmarks/soak.py`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

from runnable_k8s import connections, keda
from runnable_k8s.dev.controller import Controller, Sample
from runnable_k8s.dev.scaling import ScalingConfig
from runnable_k8s.dev.supervisor import PoolEvent, WorkerPool
from runnable_k8s.settings import Settings


class DevSession:
    """Autoscale `runnable-k8s worker` processes on the queue of `settings`.

    Args:
        settings: Redis URL, signing key and queue (required).
        scaling: the ScaledObject's parameters (see `scaling.load`).
        log_dir: worker logs and heartbeat files go here.
        base_env: the environment workers inherit (e.g. `os.environ`).
        config_values: the ConfigMap's values (`config.env`); its `RUNNABLE_K8S_*` keys are
            the workers' defaults, as in a cluster.
        extra_env: set last in the workers' environment (tests shorten timeouts here).
        concurrency: runs per worker; default the scaling target (the single source ties them).
        restart_backoff: first delay before a crashed worker is restarted.
        grace_period: seconds a SIGTERMed worker may take (TERMINATION_GRACE_PERIOD_SECONDS).
    """

    def __init__(
        self,
        settings: Settings,
        scaling: ScalingConfig,
        log_dir: Path,
        *,
        base_env: Mapping[str, str] | None = None,
        config_values: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        concurrency: int | None = None,
        restart_backoff: float = 10.0,
        grace_period: float | None = None,
        on_event: Callable[[PoolEvent], None] | None = None,
        on_sample: Callable[[Sample], None] | None = None,
    ) -> None:
        values = dict(config_values or {})
        if grace_period is None:
            grace_period = float(values.get("TERMINATION_GRACE_PERIOD_SECONDS", "660"))
        env = keda.worker_environment(
            settings, base=base_env or {}, config_values=values, extra=extra_env
        )
        self.settings = settings
        self.pool = WorkerPool(
            env,
            log_dir,
            concurrency=concurrency or max(1, int(scaling.target)),
            restart_backoff=restart_backoff,
            grace_period=grace_period,
            on_event=on_event,
        )
        self.client = connections.sync_client(
            settings.require_redis_url(), socket_timeout=5, socket_connect_timeout=2
        )
        self.controller = Controller(self.client, scaling, self.pool, on_sample=on_sample)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> DevSession:
        self._thread = threading.Thread(target=self._run, name="runnable-k8s-dev", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.controller.run(self._stop)
        except BaseException as exc:  # surfaced by close()
            self._error = exc
            raise

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def freeze(self) -> None:
        """Stop changing the number of workers (the loop keeps reaping and restarting)."""
        self.controller.frozen = True

    def drain(self, timeout: float, interrupted: threading.Event | None = None) -> int | None:
        """Keep autoscaling until no run is queued or in flight, `timeout` passes or
        `interrupted` is set. Returns the remaining backlog (None: Redis did not answer)."""
        deadline = time.monotonic() + timeout
        backlog = self.controller.backlog()
        while backlog and time.monotonic() < deadline:
            if interrupted is not None and interrupted.wait(0.5):
                break
            if interrupted is None:
                time.sleep(0.5)
            backlog = self.controller.backlog()
        return backlog

    def close(self, timeout: float | None = None) -> None:
        """Stop the loop, then warm-stop every worker (running runs finish; messages a worker
        reserved but did not start go back to the queue)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.pool.stop_all(timeout)
        self.client.close()
        if self._error is not None:
            raise RuntimeError("the dev control loop failed") from self._error

    def __enter__(self) -> DevSession:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
