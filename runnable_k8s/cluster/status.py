"""What the workers are doing: Deployment replicas, ScaledObject conditions, queue depth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runnable_k8s import keda
from runnable_k8s.cluster.kube import KubeApi
from runnable_k8s.cluster.manifests import WORKER
from runnable_k8s.errors import RunnableK8sError
from runnable_k8s.store import keys


@dataclass(frozen=True)
class Replicas:
    """Replica counts of the worker Deployment (`desired` is KEDA's current choice)."""

    desired: int
    current: int
    ready: int
    updated: int
    available: int


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class Scaler:
    """The ScaledObject's state and the Redis keys its triggers count."""

    conditions: list[Condition]
    min_replicas: int
    max_replicas: int
    queue: str | None
    database: str | None


@dataclass(frozen=True)
class Queue:
    """Live counts read from Redis; `error` says why they are missing."""

    name: str
    database: int
    queued: int | None = None
    inflight: int | None = None
    pending: int | None = None
    """Runs submitted and not yet started (queued ones included; the rest were lost by the
    broker and wait for a worker's rescue sweep, or are being delivered)."""
    error: str | None = None


@dataclass
class Status:
    namespace: str
    replicas: Replicas | None = None
    scaler: Scaler | None = None
    queue: Queue | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        readable = self.queue is None or self.queue.error is None
        return self.replicas is not None and self.scaler is not None and readable


def read_cluster(api: KubeApi, namespace: str) -> Status:
    """Read the worker Deployment and its ScaledObject.

    Raises:
        RunnableK8sError: the API failed, or the worker Deployment does not exist.
    """
    status = Status(namespace)
    deployment = api.get("apps/v1", "Deployment", WORKER, namespace)
    if deployment is None:
        raise RunnableK8sError(
            f"Deployment {WORKER} not found in namespace {namespace}: deploy first, or pass "
            "--namespace"
        )
    spec, live = deployment.get("spec") or {}, deployment.get("status") or {}
    status.replicas = Replicas(
        desired=int(spec.get("replicas") or 0),
        current=int(live.get("replicas") or 0),
        ready=int(live.get("readyReplicas") or 0),
        updated=int(live.get("updatedReplicas") or 0),
        available=int(live.get("availableReplicas") or 0),
    )
    if not api.knows("keda.sh/v1alpha1", "ScaledObject"):
        status.warnings.append("KEDA is not installed: nothing scales the workers")
        return status
    scaled = api.get("keda.sh/v1alpha1", "ScaledObject", WORKER, namespace)
    if scaled is None:
        status.warnings.append(f"ScaledObject {WORKER} not found: nothing scales the workers")
        return status
    status.scaler = _scaler(scaled)
    return status


def _scaler(scaled: dict[str, Any]) -> Scaler:
    spec = scaled.get("spec") or {}
    queue = database = None
    triggers = [
        t for t in spec.get("triggers") or [] if t.get("type") in {"redis", "redis-sentinel"}
    ]
    # The trigger on the queue's own list names the queue: the shipped one is named "queued";
    # otherwise the first whose key is none of those that are not a queue list.
    others = {keys.UNACKED, keys.LIMIT_WAITING}
    chosen = next((t for t in triggers if t.get("name") == "queued"), None) or next(
        (
            t
            for t in triggers
            if (name := str((t.get("metadata") or {}).get("listName", ""))) not in others
            and not name.startswith(keys.pending(""))
        ),
        None,
    )
    if chosen is not None:
        metadata = chosen.get("metadata") or {}
        queue = str(metadata.get("listName", ""))
        database = str(metadata.get("databaseIndex", "0"))
    conditions = [
        Condition(
            str(c.get("type")),
            str(c.get("status")),
            str(c.get("reason") or ""),
            str(c.get("message") or ""),
        )
        for c in (scaled.get("status") or {}).get("conditions") or []
    ]
    return Scaler(
        conditions=conditions,
        min_replicas=int(spec.get("minReplicaCount", 0)),
        max_replicas=int(spec.get("maxReplicaCount", 100)),
        queue=queue,
        database=database,
    )


def read_queue(redis_url: str, queue: str, *, timeout: float = 5.0) -> Queue:
    """What the triggers count (`keda.queue_counts`): the queue's lists (every priority),
    kombu's `unacked` hash and the pending set, in the URL's database."""
    import redis

    from runnable_k8s import connections
    from runnable_k8s.settings import Settings

    database = Settings(redis_url=redis_url).redis_db
    client = connections.sync_client(
        redis_url, socket_connect_timeout=timeout, socket_timeout=timeout
    )
    try:
        counts = keda.queue_counts(client, queue)
    except redis.RedisError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Queue(queue, database, error=f"cannot read Redis: {text}")
    finally:
        client.close()
    return Queue(
        queue,
        database,
        queued=counts.queued,
        inflight=counts.inflight,
        pending=counts.pending,
    )


def format_status(status: Status) -> str:
    """Plain text for humans, one fact a line."""
    lines = [f"namespace:  {status.namespace}"]
    if status.replicas:
        r = status.replicas
        lines.append(
            f"workers:    {r.ready}/{r.desired} ready ({r.current} running, "
            f"{r.updated} up to date, {r.available} available)"
        )
    if status.scaler:
        s = status.scaler
        lines.append(
            f"scaler:     {s.min_replicas}..{s.max_replicas} replicas on list {s.queue!r} "
            f"(db {s.database}) + {keys.UNACKED!r} + its pending set"
        )
        for c in s.conditions:
            detail = f" {c.reason}: {c.message}" if c.reason or c.message else ""
            lines.append(f"  {c.type}={c.status}{detail}")
        if not s.conditions:
            lines.append("  (no conditions yet: is the KEDA operator running?)")
    if status.queue:
        q = status.queue
        if q.error:
            lines.append(f"queue:      {q.name!r} (db {q.database}): {q.error}")
        else:
            lines.append(
                f"queue:      {q.queued} queued, {q.inflight} in flight, {q.pending} not yet "
                f"started (list {q.name!r}, db {q.database})"
            )
    lines += [f"warning:    {w}" for w in status.warnings]
    return "\n".join(lines)
