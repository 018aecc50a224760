"""Waiting for replicas: what makes a write survive a Sentinel failover.

Redis replicates asynchronously: a write the master acknowledged is lost with it if no replica
had it yet. `WAIT n timeout` blocks until `n` replicas acknowledged every write *of the
connection it is sent on*. Our writes go through connection pools (and MULTI/EXEC pipelines
that hand their connection back), so the WAIT is sent behind a `PUBLISH` on one connection:
the PUBLISH is propagated to replicas like a write, after every write whose reply we already
had, and replication is one ordered stream, so a replica that acknowledged it has those writes
too. The PUBLISH goes to a channel nobody listens to: it changes no key.

The number waited for is `replica_acks`, or every replica the master has when it has fewer
(read with `ROLE` at most once a second): right after a failover the new master has none
until the old one rejoins, and a wait for a replica that does not exist would stop every
write. A write the only node holds cannot be lost to a failover: there is no one to fail over
to. Deploy two replicas for `replica_acks=1` to hold through a failover.
"""

from __future__ import annotations

import time
from typing import Any

import redis
import redis.asyncio as aredis

FENCE_CHANNEL = "runnable-k8s:replication-fence"
_ROLE_EVERY = 1.0


class Fence:
    """Waits for replicas on behalf of one client (sync or asyncio)."""

    def __init__(self, replicas: int, timeout: float) -> None:
        self.replicas = replicas
        self.timeout_ms = max(1, int(timeout * 1000))  # WAIT 0 would block forever
        self._known: int | None = None
        self._read_at = 0.0

    def _stale(self) -> bool:
        return self._known is None or time.monotonic() - self._read_at > _ROLE_EVERY

    def _learn(self, role: Any) -> None:
        # ROLE on a master: [b"master", offset, [[host, port, offset], ...]].
        self._known = len(role[2]) if role and role[0] in (b"master", "master") else 0
        self._read_at = time.monotonic()

    def forget(self) -> None:
        """Read the replica count again before the next wait (after a short one)."""
        self._known = None

    def wait(self, client: redis.Redis) -> tuple[int, int]:
        """Block until the replicas have every write this process saw acknowledged.
        Returns (acknowledged, wanted)."""
        if self._stale():
            self._learn(client.role())
        wanted = min(self.replicas, self._known or 0)
        if not wanted:
            return 0, 0
        with client.pipeline(transaction=False) as pipe:
            pipe.publish(FENCE_CHANNEL, b"")
            pipe.wait(wanted, self.timeout_ms)
            result: list[Any] = pipe.execute()
        return int(result[1]), wanted

    async def await_(self, client: aredis.Redis) -> tuple[int, int]:
        """The asyncio twin of `wait`."""
        if self._stale():
            self._learn(await client.role())
        wanted = min(self.replicas, self._known or 0)
        if not wanted:
            return 0, 0
        async with client.pipeline(transaction=False) as pipe:
            pipe.publish(FENCE_CHANNEL, b"")
            pipe.wait(wanted, self.timeout_ms)
            result: list[Any] = await pipe.execute()
        return int(result[1]), wanted
