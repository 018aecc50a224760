"""Prometheus metrics of one worker process, served on `RUNNABLE_K8S_METRICS_PORT` (0: off).

Every label value comes from a small fixed set, or from `NameLabels`: a runnable's name is
signed but still caller-chosen, so a name becomes a label only after a runnable of that name
loaded from the allowlist, cleaned and truncated, and only for the first `MAX_NAMES` such
names; all others count under "other". Series are never evicted (evicting a counter resets
it and breaks `rate()`), so the bound is a hard cap rather than an LRU.
"""

from __future__ import annotations

import re
import threading
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

RejectReason = Literal[
    "bad_signature",
    "too_large",
    "malformed",
    "expired",
    "replay",
    "duplicate",
    "disallowed",
    "unknown_task",
]
REJECT_REASONS: Final[tuple[RejectReason, ...]] = (
    "bad_signature",
    "too_large",
    "malformed",
    "expired",
    "replay",
    "duplicate",
    "disallowed",
    "unknown_task",
)
"""Why a message was refused without running (the `reason` label)."""

RunOutcome = Literal[
    "succeeded", "interrupted", "failed", "timeout", "cancelled", "expired", "rejected"
]
RUN_OUTCOMES: Final[tuple[RunOutcome, ...]] = (
    "succeeded",
    "interrupted",
    "failed",
    "timeout",
    "cancelled",
    "expired",
    "rejected",
)
"""How a run this worker recorded an outcome for ended (the `outcome` label)."""

OTHER: Final = "other"
MAX_NAMES: Final = 50
MAX_NAME_LENGTH: Final = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/ -]")

# An LLM call takes from tens of milliseconds to minutes; queue wait from nothing to the expiry.
_DURATION_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_WAIT_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class NameLabels:
    """Bounded label values for runnable names (see the module docstring)."""

    def __init__(self, limit: int = MAX_NAMES) -> None:
        self._limit = limit
        self._admitted: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def clean(name: str) -> str:
        return _UNSAFE.sub("_", name[:MAX_NAME_LENGTH]) or OTHER

    def admit(self, name: str) -> str:
        """Note that a runnable called `name` loaded; return its label."""
        label = self.clean(name)
        with self._lock:
            if label in self._admitted:
                return label
            if len(self._admitted) < self._limit and label != OTHER:
                self._admitted.add(label)
                return label
        return OTHER

    def label(self, name: str) -> str:
        """The label of `name`: itself once admitted, else "other"."""
        label = self.clean(name)
        return label if label in self._admitted else OTHER


class WorkerMetrics:
    """The worker's metrics, in their own registry (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.names = NameLabels()
        r = self.registry
        self.runs = Counter(
            "runnable_k8s_runs",
            "Runs whose outcome this worker recorded, by runnable name and outcome.",
            ["name", "outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "runnable_k8s_rejected_messages",
            "Messages refused without running, by reason.",
            ["reason"],
            registry=r,
        )
        self.retries = Counter(
            "runnable_k8s_run_retries",
            "Retries of runs after a RUNNABLE_K8S_RETRY_ON error, by runnable name.",
            ["name"],
            registry=r,
        )
        self.duration = Histogram(
            "runnable_k8s_run_duration_seconds",
            "Seconds from a run's start on this worker to its recorded outcome.",
            ["name"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "runnable_k8s_queue_wait_seconds",
            "Seconds from submission (created_at) to the start of the run (started_at).",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "runnable_k8s_runs_in_flight", "Runs executing on this worker now.", registry=r
        )
        # Flow control (README, "Flow control"): labelled by the limit's rule key as
        # configured (`tenant:*`, not each tenant), so the label set stays the spec's size.
        self.limit_waiting = Gauge(
            "runnable_k8s_limit_waiting_calls",
            "Model calls on this worker waiting on a cluster-wide limit now.",
            ["key", "reason"],
            registry=r,
        )
        self.limit_wait_seconds = Counter(
            "runnable_k8s_limit_wait_seconds",
            "Seconds model calls spent waiting on a cluster-wide limit.",
            ["key", "reason"],
            registry=r,
        )
        self.limit_pauses = Counter(
            "runnable_k8s_limit_pauses",
            "Answers of 429 that paused a key for every worker.",
            ["key"],
            registry=r,
        )
        self.cache_hits = Counter(
            "runnable_k8s_runnable_cache_hits",
            "Runnables taken from the deserialization cache.",
            registry=r,
        )
        self.cache_misses = Counter(
            "runnable_k8s_runnable_cache_misses",
            "Runnables deserialized (not in the cache).",
            registry=r,
        )
        self.heartbeat = Gauge(
            "runnable_k8s_worker_heartbeat_timestamp_seconds",
            "When the event loop last turned (liveness); stops moving on a wedged loop.",
            registry=r,
        )
        self.ready = Gauge(
            "runnable_k8s_worker_ready_timestamp_seconds",
            "When the worker was last ready: consuming, and Redis answered a PING.",
            registry=r,
        )
        self.redis_up = Gauge(
            "runnable_k8s_worker_redis_up",
            "1 when the last PING to Redis succeeded, else 0.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "runnable_k8s_queue_depth",
            "Runs waiting in the queue's list of each priority (LLEN, read every heartbeat).",
            ["priority"],
            registry=r,
        )
        self.webhooks = Counter(
            "runnable_k8s_webhook_deliveries",
            "Completion webhook attempts by result: delivered, retried, failed, refused.",
            ["result"],
            registry=r,
        )
        # Every fixed label value exists from the start, so `increase()` sees the first event.
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
        for outcome in RUN_OUTCOMES:
            self.runs.labels(name=OTHER, outcome=outcome)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve `/metrics` on `port` from a daemon thread (nothing when `port` is 0)."""
        if port:
            start_http_server(port, addr=addr, registry=self.registry)

    def reject(self, reason: RejectReason) -> None:
        self.rejected.labels(reason=reason).inc()

    def finished(self, name: str, outcome: RunOutcome, duration: float | None) -> None:
        label = self.names.label(name)
        self.runs.labels(name=label, outcome=outcome).inc()
        if duration is not None:
            self.duration.labels(name=label).observe(max(0.0, duration))

    def retried(self, name: str) -> None:
        self.retries.labels(name=self.names.label(name)).inc()

    def started(self, created_at: float | None, started_at: float | None) -> None:
        if created_at is not None and started_at is not None:
            self.queue_wait.observe(max(0.0, started_at - created_at))
