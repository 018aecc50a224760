-- Extend the leases of concurrency slots a live worker still holds.
-- KEYS: holders zsets. ARGV: lease ms, then one call id per key (the same order).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  -- XX: a slot that already expired (this worker was stalled) is not taken back silently.
  redis.call('ZADD', KEYS[i], 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], lease)
end
return 1
