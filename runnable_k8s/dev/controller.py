"""The control loop of `runnable-k8s dev`: at each KEDA poll and each HPA sync read the trigger
lengths (`LLEN queue`, `HLEN unacked`, ...), decide as KEDA and the HPA would, and resize the
worker pool."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis

from runnable_k8s.dev.scaling import Autoscaler, ScalingConfig
from runnable_k8s.dev.supervisor import WorkerPool
from runnable_k8s.keda import trigger_lengths


@dataclass(frozen=True, slots=True)
class Sample:
    """One turn of the loop, for the live view and for the soak's figures."""

    at: float
    replicas: int
    ready: int
    stopping: int
    lengths: Mapping[str, int]
    metric: float
    desired: int
    reason: str
    error: str = ""


class Controller:
    """Owns the autoscaler state and drives `pool`. Not thread-safe: one thread calls `step`
    (or `run`); others may read `samples`."""

    def __init__(
        self,
        client: redis.Redis,
        config: ScalingConfig,
        pool: WorkerPool,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_sample: Callable[[Sample], None] | None = None,
        keep: int = 100_000,
    ) -> None:
        self.client = client
        self.config = config
        self.pool = pool
        self.clock = clock
        self.autoscaler = Autoscaler(config)
        self.on_sample = on_sample
        self.samples: deque[Sample] = deque(maxlen=keep)
        self.frozen = False
        """When true the loop still watches the pool but no longer changes its size."""

    def step(self, *, keda: bool = True, hpa: bool = True) -> Sample:
        """Read the triggers once and run a KEDA poll and/or an HPA sync on them."""
        self.pool.poll()
        now = self.clock()
        current = self.pool.replicas
        try:
            lengths = trigger_lengths(self.client, self.config.triggers)
        except (redis.RedisError, OSError) as exc:
            # KEDA keeps the current replica count while a scaler errors (no fallback set).
            sample = Sample(
                now,
                current,
                self.pool.ready,
                self.pool.stopping,
                {},
                0.0,
                current,
                "metric unavailable",
                error=str(exc),
            )
            return self._emit(sample)
        decision = self.autoscaler.decide(now, lengths, current, keda=keda, hpa=hpa)
        if not self.frozen and decision.desired != current:
            self.pool.scale_to(decision.desired)
        sample = Sample(
            now,
            self.pool.replicas,
            self.pool.ready,
            self.pool.stopping,
            lengths,
            decision.metric,
            decision.desired,
            decision.reason,
        )
        return self._emit(sample)

    def _emit(self, sample: Sample) -> Sample:
        self.samples.append(sample)
        if self.on_sample is not None:
            self.on_sample(sample)
        return sample

    def run(self, stop: threading.Event, *, tick: float = 0.2) -> None:
        """Poll as KEDA does every polling interval and sync as the HPA does every sync period
        (with each poll when the config has none) until `stop` is set; between the two keep
        reaping and restarting workers every `tick` seconds."""
        sync_period = self.config.hpa_sync_period
        next_poll = next_sync = self.clock()
        while not stop.is_set():
            now = self.clock()
            keda = now >= next_poll
            hpa = keda if sync_period is None else now >= next_sync
            if keda or hpa:
                self.step(keda=keda, hpa=hpa)
                if keda:
                    next_poll = now + self.config.polling_interval
                if hpa and sync_period is not None:
                    next_sync = now + sync_period
            else:
                self.pool.poll()
            due = next_poll if sync_period is None else min(next_poll, next_sync)
            stop.wait(min(tick, max(0.0, due - self.clock())))

    def backlog(self) -> int | None:
        """The formula's value now, rounded up (any work left counts at least 1), or None when
        Redis does not answer."""
        try:
            lengths = trigger_lengths(self.client, self.config.triggers)
        except (redis.RedisError, OSError):
            return None
        return math.ceil(self.config.metric(lengths))
