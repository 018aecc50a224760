-- Claim the webhook deliveries that are due: each claimed run's next look moves to the lease's
-- end, so a worker that dies mid-delivery hands it to whichever worker looks after that.
-- KEYS[1]: the due-time sorted set. ARGV: now, lease end, most to claim.
-- Returns the claimed run ids.
local ids = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('zadd', KEYS[1], ARGV[2], id)
end
return ids
