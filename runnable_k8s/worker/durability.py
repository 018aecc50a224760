"""A recorded outcome survives a failover (`RUNNABLE_K8S_REPLICA_ACKS` above 0).

The worker acknowledges a run's message only after its outcome is on `replica_acks` replicas.
Until then the message stays in kombu's `unacked` hash: if the master dies with an outcome no
replica had, the new master still holds the message, which comes back after the visibility
timeout, and the run is claimed and run again instead of being lost. When Redis goes away
during the wait, the task hands the message back (app.py); the next delivery finds the outcome
(or runs the run again if the outcome died with the master). When the master answers but the
replicas stay short (one down or lagging), the message is acknowledged with a warning: handing
it back would only deliver it again and again while the replica is away.
"""

from __future__ import annotations

import logging
import weakref

import redis.asyncio as aredis

from runnable_k8s import replication
from runnable_k8s.settings import Settings

log = logging.getLogger("runnable_k8s.worker")
# One per client: the replica count is read once a second, not per run.
_fences: weakref.WeakKeyDictionary[aredis.Redis, replication.Fence] = weakref.WeakKeyDictionary()


async def confirm(client: aredis.Redis, settings: Settings) -> None:
    """Wait until `replica_acks` replicas have every write this worker had acknowledged.

    Raises:
        redis.exceptions.ConnectionError: Redis went away (the task hands the message back).
    """
    fence = _fences.get(client)
    if fence is None:
        fence = _fences[client] = replication.Fence(
            settings.replica_acks, settings.replica_ack_timeout
        )
    try:
        acked, wanted = await fence.await_(client)
    except BaseException:
        fence.forget()
        raise
    if acked < wanted:
        fence.forget()
        log.warning(
            "outcome not on %d replica(s) after %s s (%d acknowledged): a failover now "
            "could lose it",
            wanted,
            settings.replica_ack_timeout,
            acked,
        )
