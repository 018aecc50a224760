"""The worker process's two Redis pools: an asyncio one for the event loop, a blocking one for
Celery's pool threads (which read a large body before the run reaches the loop). Each is made
on first use, sized from the concurrency."""

from __future__ import annotations

from typing import Final

import redis.asyncio as aredis
from redis import Redis as SyncRedis

from runnable_k8s import connections
from runnable_k8s.settings import Settings

# Connections beyond one per run: the cancel listener's subscription, heartbeat, rescue sweep.
_SPARE_CONNECTIONS: Final = 16
# How long a command waits for a free connection before it counts as Redis being away.
_CONNECTION_WAIT: Final = 30.0


class WorkerRedis:
    """Both clients of one worker process (one per process, like the executor)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._redis: aredis.Redis | None = None
        self._sync: SyncRedis | None = None

    @property
    def redis(self) -> aredis.Redis:
        if self._redis is None:
            # redis-py's pools hold 100 connections and raise at once when all are taken:
            # with more than 100 runs streaming, their XADDs failed (MaxConnectionsError). A
            # run holds one connection at a time, so a pool a little larger than the
            # concurrency, that waits for a free connection instead of raising, never lacks
            # one for long.
            self._redis = connections.async_client(
                self._settings.require_redis_url(),
                blocking=True,
                max_connections=self._settings.concurrency + _SPARE_CONNECTIONS,
                timeout=_CONNECTION_WAIT,
                health_check_interval=30,
                socket_read_size=1024 * 1024,
            )
        return self._redis

    @property
    def sync(self) -> SyncRedis:
        """A blocking client, for pool threads (see `Executor.fetch_beside`)."""
        if self._sync is None:
            self._sync = connections.sync_client(
                self._settings.require_redis_url(),
                blocking=True,
                max_connections=self._settings.concurrency + _SPARE_CONNECTIONS,
                timeout=_CONNECTION_WAIT,
                health_check_interval=30,
            )
        return self._sync

    def close_sync(self) -> None:
        if self._sync is not None:
            self._sync.close()
