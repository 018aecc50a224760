"""A run's event stream, as the store writes it outside a finish: a delivery's first entry.

Later entries are one plain XADD each (the lease holder alone appends); the outcome is appended
by `finish` (lua/finish.lua).
"""

from __future__ import annotations

import redis.asyncio as aredis

from runnable_k8s.protocol import stream
from runnable_k8s.store import scripts


async def append_first(
    client: aredis.Redis, key: str, kind: stream.EntryKind, sealed: bytes, ttl: int
) -> bytes | int:
    """Append a delivery's first entry to the stream at `key` and give the stream its TTL,
    unless an earlier delivery published entries: then their count. Redis cannot check
    signatures, so that count includes anything shaped like a batch (lua/stream_first.lua);
    the caller tells genuine entries from forged ones. Returns the new entry's id, or the
    count."""
    # Registered per call: redis-py keeps the script's SHA and loads it again after a restart.
    first = scripts.aload(client, "stream_first")
    reply = await first(
        keys=[key],
        args=[
            kind.value,
            sealed,
            ttl,
            stream.EntryKind.CHUNK.value,
            stream.EntryKind.EVENT.value,
            stream.FIELD_KIND,
            stream.FIELD_MESSAGE,
        ],
    )
    if isinstance(reply, int):
        return reply
    return reply if isinstance(reply, bytes) else str(reply).encode()
