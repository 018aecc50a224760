"""The KEDA model `runnable-k8s dev` and `runnable-k8s cluster` share, in one place: which Redis
key each trigger of the shipped ScaledObject counts, how KEDA's Redis scaler counts a key, the
ConfigMap's `config.env`, and the environment a worker gets from it.

`dev` decides on these counts as KEDA and the HPA would (dev/scaling.py); `cluster` checks
rendered manifests against them (cluster/checks.py) and shows them (cluster/status.py). Key
names themselves live in the run store (store/keys.py) and the priority lists in
protocol/priority.py; this module says which of them the autoscaler counts, and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import redis

from runnable_k8s import spawn
from runnable_k8s.protocol import priority
from runnable_k8s.settings import ENV_PREFIX, Settings
from runnable_k8s.store import keys

FOLLOW_QUEUE: Final = ("high", "queued", "low", "pending")
"""Triggers whose key follows the queue's name (`components/single-source` copies it there)."""


def trigger_keys(queue: str) -> dict[str, str]:
    """The Redis key each trigger of the shipped ScaledObject counts, by trigger name, for
    workers consuming `queue`:

    - `high`, `queued`, `low`: the list of each priority (runs waiting);
    - `inflight`: kombu's hash of delivered, unacknowledged messages (runs held by a worker;
      without it busy workers read as idle and are scaled away); shared by every queue of the
      database;
    - `pending`: runs submitted and not started (divided by 100 in the formula: it only matters
      for a run the broker lost, which no other trigger counts);
    - `waiting`: model calls waiting on a cluster-wide limit (flow control holds the replica
      count while they wait: more workers would only wait too).
    """
    lists = priority.lists(queue)
    return {
        "high": lists["high"],
        "queued": lists["normal"],
        "low": lists["low"],
        "inflight": keys.UNACKED,
        "pending": keys.pending(queue),
        "waiting": keys.LIMIT_WAITING,
    }


def trigger_lengths(client: redis.Redis, triggers: Mapping[str, str]) -> dict[str, int]:
    """Length of each trigger's key, counted by the key's type as KEDA's Redis scaler does
    (redis_scaler.go's Lua script: ZCARD, SCARD, HLEN, LLEN; a missing key counts 0).

    Raises:
        redis.RedisError: Redis did not answer, or a key is of another type (a string, a
            stream), which the scaler reports as an error rather than a length.
    """
    with client.pipeline(transaction=False) as pipe:
        for key in triggers.values():
            pipe.type(key)
        types = pipe.execute()
    with client.pipeline(transaction=False) as pipe:
        counted = []
        for name, raw in zip(triggers, types, strict=True):
            kind = raw.encode() if isinstance(raw, str) else raw
            key = triggers[name]
            if kind == b"list":
                pipe.llen(key)
            elif kind == b"hash":
                pipe.hlen(key)
            elif kind == b"set":
                pipe.scard(key)
            elif kind == b"zset":
                pipe.zcard(key)
            elif kind == b"none":
                continue
            else:
                kind_name = kind.decode(errors="replace")
                raise redis.ResponseError(f"ERR unsupported key type: {kind_name} ({key})")
            counted.append(name)
        lengths = pipe.execute()
    result = dict.fromkeys(triggers, 0)
    result.update({name: int(n) for name, n in zip(counted, lengths, strict=True)})
    return result


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """What the triggers of `queue` count now."""

    queued: int
    """Runs waiting on the queue's lists (every priority)."""
    inflight: int
    """Messages delivered to a worker and not yet acknowledged (every queue of the database)."""
    pending: int
    """Runs submitted and not yet started (queued ones included; the rest were lost by the
    broker and wait for a worker's rescue sweep, or are being delivered)."""


def queue_counts(client: redis.Redis, queue: str) -> QueueCounts:
    """The counts of `queue`, as KEDA reads them (`trigger_lengths`).

    Raises:
        redis.RedisError: Redis did not answer, or a key has a type KEDA cannot count.
    """
    found = trigger_lengths(client, trigger_keys(queue))
    return QueueCounts(
        queued=found["high"] + found["queued"] + found["low"],
        inflight=found["inflight"],
        pending=found["pending"],
    )


def read_config_env(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines of a kustomize env file such as `base/config.env`, in order (comments
    and blank lines skipped), as kustomize's configMapGenerator reads them."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and "=" in stripped:
            key, _, value = stripped.partition("=")
            values[key.strip()] = value.strip()
    return values


def worker_environment(
    settings: Settings,
    *,
    base: Mapping[str, str],
    config_values: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a worker `dev` starts, configured as a pod is: the ConfigMap's
    `RUNNABLE_K8S_*` values, then the caller's own (`base`, which wins), then the Redis URL,
    signing key and queue of `settings`; then `extra` as given.

    The metrics port is turned off (several local workers cannot share one) and logs are plain
    text (the live view reads them), whatever the ConfigMap says.

    Raises:
        ConfigurationError: the values make no valid settings (the worker would refuse them).
    """
    layered = {k: v for k, v in (config_values or {}).items() if k.startswith(ENV_PREFIX)}
    layered.update({k: v for k, v in base.items() if k.startswith(ENV_PREFIX)})
    worker = Settings.from_env(layered).replace(
        redis_url=settings.require_redis_url(),
        signing_key=settings.require_signing_key(),
        queue=settings.queue,
        metrics_port=0,
        log_json=False,
    )
    return spawn.environment(worker, base=base, extra=extra)
