"""All configuration, read from the environment in exactly one place: `Settings.from_env()`.

The producer and the worker read the same variables, so a `.env` or a Kubernetes ConfigMap
shared by both keeps them in agreement. Nothing else in the package reads `os.environ`
(the worker's model classes read their own API keys, which is the point).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from runnable_k8s import connections
from runnable_k8s.env_values import ENV_PREFIX, SigningKey, from_text, to_text
from runnable_k8s.errors import ConfigurationError
from runnable_k8s.limits import Limit

# Re-exported: callers import the key type and the prefix from here, beside Settings.
__all__ = ["ENV_PREFIX", "Settings", "SigningKey"]

_SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")


@dataclass(frozen=True)
class Settings:
    """Configuration shared by producers, workers and the CLI.

    Every field maps to an environment variable `RUNNABLE_K8S_<FIELD NAME IN CAPITALS>`.
    """

    signing_key: SigningKey | None = None
    """HMAC-SHA256 key shared by producers and workers; at least 32 bytes. Required to send
    or run anything. Never logged, never written to Redis."""

    redis_url: str | None = field(default=None, repr=False)
    """`redis://[:password@]host:port/db` or `rediss://...` (TLS). Broker and result store.
    With Redis Sentinel: `sentinel://[:password@]h1:26379,h2:26379/db?master_name=NAME` (or
    `sentinels://` for TLS; see `runnable_k8s/connections.py`). `None` means "not configured"
    (the demo and `dev` then start an embedded server)."""

    replica_acks: int = 0
    """Replicas that must acknowledge an enqueue (producer) and a recorded outcome (worker)
    before either counts as done (Redis `WAIT`), so a failover cannot lose it. 0 waits for
    none (plain Redis). With Sentinel, 1 or more: the README's "High availability"."""

    replica_ack_timeout: float = 2.0
    """Seconds one `WAIT` for `replica_acks` replicas may block."""

    failover_wait: float = 30.0
    """With `replica_acks`: seconds a producer keeps retrying an enqueue that Redis lost or
    could not confirm (a failover under way) before it raises `BrokerUnavailable`. Keep above
    the sentinels' down-after-milliseconds plus the failover's duration."""

    queue: str = "runnable-k8s"
    """Celery queue (a Redis list of this name). KEDA's trigger `listName` must equal it."""

    time_limit: float = 600.0
    """Seconds a run may execute on a worker before it is cancelled. Keep below the pod's
    terminationGracePeriodSeconds and below `visibility_timeout`."""

    visibility_timeout: float = 0.0
    """Seconds before an unacknowledged message is redelivered (kombu). 0 means
    `time_limit + 300`. Must be above `time_limit`, or long runs are delivered twice."""

    run_expiry: float = 3600.0
    """Seconds a submitted run may wait in the queue; later it is discarded as expired."""

    result_ttl: float = 86400.0
    """Seconds results, statuses and streams are kept in Redis after a run ends."""

    dead_letter_ttl: float = 604800.0
    """Seconds a run that failed after its last attempt, was refused after verification, or
    expired stays in the dead-letter index (`runnable-k8s failed`), with its records and its
    signed request (for `failed retry`); the longer of this and `result_ttl` applies to its
    records. 0 keeps no dead letters."""

    wait_timeout: float = 900.0
    """Default seconds a caller waits for a result (`invoke`, `result()`)."""

    max_body_bytes: int = 16 * 1024 * 1024
    """Largest signed body accepted (input, output or chunk), checked before parsing."""

    allowed_classes: tuple[str, ...] = ()
    """Extra `module:Class` (or `module.Class`) import paths that may be deserialized, added to
    the built-in allowlist. Comma separated in the environment."""

    allowed_refs: tuple[str, ...] = ()
    """Import paths of registered runnables workers may run by reference (`ref=`). An entry
    ending in `.` or `:` allows a module prefix; otherwise it names one exact `module:attr`."""

    lease: float = 15.0
    """Seconds a worker's claim on a run lasts unless renewed (it renews every third). After a
    worker dies, its runs can run elsewhere this long after kombu redelivers them."""

    rescue_after: float = 60.0
    """Seconds a submitted run may go unclaimed before workers check that its message still
    exists (queued or held by a worker) and enqueue a saved copy if the broker lost it."""

    concurrency: int = 100
    """Runs one worker process holds at once (threads that wait on its event loop)."""

    batch_chunk_size: int = 64
    """Inputs per task when a `batch` is split into tasks."""

    gc_threshold: int = 10_000
    """Worker only: allocations between young-generation garbage collections (CPython's
    default is 700; 0 keeps it). The worker also freezes what start-up created, so
    collections skip it. See `runnable_k8s/worker/memory.py`."""

    malloc_keep: int = 32 * 1024 * 1024
    """Worker only (glibc): bytes of freed heap the worker keeps mapped instead of handing back
    to the OS, so large payloads do not fault fresh pages in on every run. 0 keeps glibc's
    defaults. See `runnable_k8s/worker/memory.py`."""

    log_level: str = "INFO"
    """Worker log level."""

    log_json: bool = False
    """Worker logs one JSON object per line when true."""

    heartbeat_file: str = "/tmp/runnable-k8s-heartbeat"
    """File the worker touches while its event loop turns (liveness); `<file>.ready` exists
    while its consumer takes messages (readiness). The probes check their ages."""

    heartbeat_interval: float = 5.0
    """Seconds between heartbeats."""

    metrics_port: int = 0
    """Port of the worker's Prometheus endpoint; 0 disables it."""

    task_events: bool = False
    """Worker only: send Celery task events (`task-received`, `-started`, `-succeeded`, ...)
    from the start, as `celery worker -E` does. Off, a worker sends them only once a monitor
    asks (Flower sends `enable_events` every 5 s), so Flower misses the first runs of a pod
    that KEDA just started for them. Costs Redis commands on every run (README, "Flower and
    `celery inspect`")."""

    remote_control: bool = True
    """Worker only: answer Celery remote-control commands (Flower, `celery inspect`,
    `celery control`), which come through Redis unsigned: with it on, anyone who can write to
    Redis can cancel a run by revoking its id. Off, monitors can only watch events (see
    `task_events`): no inspect, no revoke, no `enable_events`."""

    retry_on: tuple[str, ...] = ()
    """Import paths of exception types a worker retries (e.g. `openai:RateLimitError`)."""

    max_attempts: int = 3
    """Attempts per run when a `retry_on` error is raised (1 = no retries)."""

    retry_backoff: float = 1.0
    """First retry delay in seconds; doubles per attempt, with full jitter."""

    retry_backoff_max: float = 60.0
    """Cap on a single retry delay in seconds."""

    webhook_allow: tuple[str, ...] = ()
    """URL prefixes completion webhooks may go to (comma separated), e.g.
    `https://hooks.example.com/`. Workers call no other URL; empty means no webhooks at all.
    Set on producers too, and `submit(webhook=...)` refuses URLs off it before enqueueing."""

    webhook_secret: SigningKey | None = None
    """Worker only: HMAC-SHA256 key that signs webhook deliveries (receivers verify with it,
    `runnable_k8s.verify_webhook`). Never written to Redis. Unset: workers refuse webhooks."""

    webhook_attempts: int = 8
    """Worker only: POSTs of one webhook before it is recorded as failed."""

    webhook_backoff: float = 1.0
    """Worker only: seconds before the first webhook retry; doubles per attempt, up to 300."""

    webhook_timeout: float = 10.0
    """Worker only: seconds one webhook POST may take (connect and response)."""

    limits: tuple[Limit, ...] = ()
    """Worker only: cluster-wide flow control per key, one rule per line or `;`: e.g.
    `openai:gpt-4o-mini rpm=120 tpm=40000 concurrency=5` (README, "Flow control"). A malformed
    rule stops the worker at start, naming the rule."""

    limit_margin: float = 0.25
    """Worker only: seconds added to every rate window, so requests that take a little longer
    to reach the provider than others never land inside its window twice."""

    openai_available: bool = field(default=False, compare=False)
    """Whether `OPENAI_API_KEY` is set (the demo then uses ChatOpenAI). Only its presence is
    read here; the value stays in the environment, where ChatOpenAI reads it on the worker."""

    redact_values: tuple[str, ...] = field(default=(), compare=False, repr=False)
    """Values of secret-looking environment variables (`*KEY*`, `*TOKEN*`, `*SECRET*`,
    `*PASSWORD*`), removed from error messages and tracebacks before they reach Redis."""

    extra: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """`RUNNABLE_K8S_*` variables this version does not know (kept for diagnostics)."""

    @property
    def effective_visibility_timeout(self) -> float:
        return self.visibility_timeout or self.time_limit + 300.0

    @property
    def rescue_every(self) -> float:
        """Seconds between a worker's rescue sweeps: a quarter of `rescue_after`, within
        1 to 30 s."""
        return max(1.0, min(30.0, self.rescue_after / 4))

    @property
    def rescue_within(self) -> float:
        """Seconds within which a live worker enqueues again a message the broker lost.
        Neither the queue nor kombu's unacked hash counts such a run: without the pending-set
        trigger, KEDA's cooldownPeriod must exceed this plus its polling interval."""
        return self.rescue_after + self.rescue_every

    @property
    def redis_db(self) -> int:
        """The database index of `redis_url` (0 when the URL names none)."""
        return connections.database(self.redis_url) if self.redis_url else 0

    def require_signing_key(self) -> SigningKey:
        if self.signing_key is None:
            raise ConfigurationError(
                "RUNNABLE_K8S_SIGNING_KEY is not set: producers and workers need the same "
                "secret key (32+ bytes), e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(48))'`"
            )
        return self.signing_key

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigurationError(
                "RUNNABLE_K8S_REDIS_URL is not set (e.g. redis://:password@redis:6379/0)"
            )
        return self.redis_url

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated like `from_env`)."""
        return _validated(dataclasses.replace(self, **changes))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `RUNNABLE_K8S_*` variables (the process environment by default).

        Raises:
            ConfigurationError: a variable is malformed or values contradict each other.
        """
        env = os.environ if environ is None else environ
        known = {f.name for f in dataclasses.fields(cls)} - _DERIVED
        kwargs: dict[str, Any] = {}
        extra: dict[str, str] = {}
        for name, raw in env.items():
            if not name.startswith(ENV_PREFIX):
                continue
            key = name[len(ENV_PREFIX) :].lower()
            if key not in known:
                extra[name] = raw
                continue
            kwargs[key] = _parse(key, raw)
        secrets = tuple(
            sorted(
                {
                    value
                    for name, value in env.items()
                    if len(value) >= 8 and any(m in name.upper() for m in _SECRET_MARKERS)
                },
                key=len,
                reverse=True,
            )
        )
        return _validated(
            cls(
                **kwargs,
                openai_available=bool(env.get("OPENAI_API_KEY")),
                redact_values=secrets,
                extra=extra,
            )
        )

    def to_env(self) -> dict[str, str]:
        """The `RUNNABLE_K8S_*` variables `from_env` reads back into these settings (every
        field, defaults included, plus `extra`): the environment of a process started with
        them, such as a worker. It holds the signing key and the Redis URL's password in
        clear: hand it to a child process only, never log it or write it anywhere."""
        env = dict(self.extra)
        for name in _FIELD_TYPES:
            if name not in _DERIVED:
                env[ENV_PREFIX + name.upper()] = to_text(getattr(self, name))
        return env


# Not read from a variable of their own: from other variables (secrets, OpenAI's key), or the
# unknown `RUNNABLE_K8S_*` ones.
_DERIVED = frozenset({"extra", "redact_values", "openai_available"})
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Settings)}


def _parse(key: str, raw: str) -> Any:
    kind = str(_FIELD_TYPES[key])
    try:
        return from_text(kind, raw)
    except ValueError as exc:
        name = ENV_PREFIX + key.upper()
        raise ConfigurationError(f"{name}: cannot read {kind} from the value given") from exc


def _validated(settings: Settings) -> Settings:
    if settings.signing_key is not None and len(settings.signing_key.reveal()) < 32:
        raise ConfigurationError("RUNNABLE_K8S_SIGNING_KEY must be at least 32 bytes long")
    if settings.redis_url is not None:
        connections.check_url(settings.redis_url)
    if settings.replica_acks < 0:
        raise ConfigurationError("RUNNABLE_K8S_REPLICA_ACKS must be 0 (no WAIT) or more")
    if not settings.queue or any(c.isspace() for c in settings.queue):
        raise ConfigurationError("RUNNABLE_K8S_QUEUE must be a non-empty name without spaces")
    for name in (
        "time_limit",
        "visibility_timeout",
        "run_expiry",
        "result_ttl",
        "wait_timeout",
        "heartbeat_interval",
        "lease",
        "rescue_after",
        "retry_backoff",
        "retry_backoff_max",
        "webhook_backoff",
        "webhook_timeout",
        "limit_margin",
        "replica_ack_timeout",
        "failover_wait",
    ):
        value = getattr(settings, name)
        # NaN passes every comparison below; infinity would never expire anything.
        zero_ok = name in ("visibility_timeout", "limit_margin")
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise ConfigurationError(f"{ENV_PREFIX}{name.upper()} must be a positive number")
    if settings.effective_visibility_timeout <= settings.time_limit:
        raise ConfigurationError(
            "RUNNABLE_K8S_VISIBILITY_TIMEOUT must be above RUNNABLE_K8S_TIME_LIMIT, or a long "
            "run is redelivered to a second worker while the first still runs it"
        )
    if not math.isfinite(settings.dead_letter_ttl) or settings.dead_letter_ttl < 0:
        raise ConfigurationError(
            "RUNNABLE_K8S_DEAD_LETTER_TTL must be 0 (no dead letters) or a positive number"
        )
    if settings.result_ttl < settings.run_expiry:
        raise ConfigurationError(
            "RUNNABLE_K8S_RESULT_TTL must be at least RUNNABLE_K8S_RUN_EXPIRY: a run's record "
            "must outlive its message, or a replayed message could run again"
        )
    for name in ("concurrency", "batch_chunk_size", "max_attempts", "webhook_attempts"):
        if getattr(settings, name) < 1:  # named, so the operator knows which one to fix
            raise ConfigurationError(f"{ENV_PREFIX}{name.upper()} must be at least 1")
    if settings.gc_threshold < 0 or settings.malloc_keep < 0:
        raise ConfigurationError(
            "RUNNABLE_K8S_GC_THRESHOLD and RUNNABLE_K8S_MALLOC_KEEP must be 0 (the runtime's "
            "default) or more"
        )
    for prefix in settings.webhook_allow:
        if urlsplit(prefix).scheme not in {"http", "https"} or not urlsplit(prefix).netloc:
            raise ConfigurationError(
                f"RUNNABLE_K8S_WEBHOOK_ALLOW: {prefix!r} is not an http(s) URL prefix"
            )
    if settings.max_body_bytes < 1024:
        raise ConfigurationError("RUNNABLE_K8S_MAX_BODY_BYTES must be at least 1024")
    return settings
