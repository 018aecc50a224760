"""Re-enqueue runs whose Celery message the broker lost.

kombu's Redis transport takes a message off the queue with BRPOP and records it as
unacknowledged with a second command. If Redis dies between the two (or the BRPOP reply is
lost with the connection), the message is gone: it is neither queued nor unacknowledged, and
no visibility timeout brings it back. The producer keeps a copy of every message and a
"pending" entry until a worker claims the run; one worker at a time sweeps runs pending for
longer than `RUNNABLE_K8S_RESCUE_AFTER` and pushes back any whose message is in neither place.
A run rescued twice, or rescued while a slow worker is still claiming it, is harmless: claims
are compare-and-set, and a delivery of a started or finished run does not run it again.
A worker that rejects the exact bytes of a run's stored message takes the run off the pending
set (protocol/rejection.py): pushing them again would only meet the same rejection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

import redis.asyncio as aredis

from runnable_k8s.protocol import keys, priority

log = logging.getLogger("runnable_k8s.worker")

# Bounds that keep one sweep cheap for Redis: LPOS scans the queue list.
_BATCH: Final = 50
_MAX_QUEUE_SCAN: Final = 10_000

# KEYS: pending set, unacked hash, then the queue's lists, highest priority first (normal is
# KEYS[4]). ARGV: cutoff score, batch, key prefix, max scan. Returns the rescued run ids.
# A copy goes back to the list its routing key names, if that is one of KEYS: the copy is read
# from Redis and never chooses a key outside them (an unknown name means the normal list).
_SWEEP: Final = """
local ids = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local rescued = {}
for _, id in ipairs(ids) do
  local message = redis.call('get', ARGV[3] .. '{' .. id .. '}:message')
  if not message then
    redis.call('zrem', KEYS[1], id)
  else
    -- The copy is read from Redis: check every type before use, so one hostile copy cannot
    -- stop the sweep for every run after it.
    local ok, decoded = pcall(cjson.decode, message)
    local tag = nil
    local list = KEYS[4]
    if ok and type(decoded) == 'table' and type(decoded['properties']) == 'table' then
      local properties = decoded['properties']
      tag = properties['delivery_tag']
      if type(properties['delivery_info']) == 'table' then
        local routed = properties['delivery_info']['routing_key']
        for i = 3, #KEYS do
          if KEYS[i] == routed then list = KEYS[i] end
        end
      end
    end
    if type(tag) ~= 'string' then
      redis.call('zrem', KEYS[1], id)
    -- RANK -1: from the consuming end, where messages pending the longest wait (producers
    -- LPUSH, kombu BRPOPs): a queued one is found in a few steps, not after the whole list.
    elseif redis.call('hexists', KEYS[2], tag) == 0
       and not redis.call('lpos', list, message, 'RANK', -1, 'MAXLEN', ARGV[4]) then
      redis.call('rpush', list, message)
      table.insert(rescued, id)
    end
  end
end
return rescued
"""


class Rescuer:
    def __init__(self, client: aredis.Redis, queue: str, *, after: float, every: float) -> None:
        self._client = client
        self._queue = queue
        self._after = after
        self._every = every
        self._sweep = client.register_script(_SWEEP)

    async def sweep(self) -> list[str]:
        """One sweep (if no other worker holds the sweep lock). Returns rescued run ids."""
        got = await self._client.set(
            keys.rescue_lock(self._queue), b"1", nx=True, px=int(self._every * 1000)
        )
        if not got:
            return []
        lists = list(priority.lists(self._queue).values())
        for name in lists:
            if await self._client.llen(name) > _MAX_QUEUE_SCAN:
                return []  # a deep backlog: sweep once it drains (LPOS would scan it all)
        raw = await self._sweep(
            keys=[keys.pending(self._queue), keys.UNACKED, *lists],
            args=[time.time() - self._after, _BATCH, f"{keys.PREFIX}:", _MAX_QUEUE_SCAN],
        )
        rescued = [r.decode() if isinstance(r, bytes) else str(r) for r in raw or []]
        for run_id in rescued:
            # All a sweep knows is where the message is not. A worker that could not verify a
            # run's stored message took it off the pending set, so it is never pushed again.
            log.warning(
                "rescued run=%s: pending for over %gs, its message neither queued nor held by "
                "a worker; enqueued again",
                run_id,
                self._after,
            )
        return rescued

    async def forever(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                await self.sweep()
            except Exception as exc:  # Redis away, or a hostile key: the next sweep tries again
                log.warning("rescue sweep failed: %s", exc)
