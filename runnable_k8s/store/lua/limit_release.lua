-- A model call ended: free its concurrency slots, settle its tokens, and move its request and
-- tokens to the time it ended. The provider saw the request somewhere between the slot and
-- the answer, so a window counted from the answer never ends before the provider's does,
-- however long the request took to get there.
-- KEYS: per rule four keys (requests zset, tokens zset, token amounts hash, holders zset).
-- ARGV: call id, tokens the call used (-1: unknown, keep the estimate), rule count, input
--       characters of the call (0: unknown).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, used, rules = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local size = tonumber(ARGV[4])
for i = 1, rules do
  local k = (i - 1) * 4
  local req, tok, tokn, conc = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  redis.call('ZREM', conc, id)
  redis.call('ZADD', req, 'XX', 'GT', now, id)
  if redis.call('ZSCORE', tok, id) then
    redis.call('ZADD', tok, 'XX', 'GT', now, id)
    if used >= 0 then
      redis.call('HSET', tokn, id, used)
      -- An exponential average of recent calls: the estimate a new call is admitted with.
      local avg = tonumber(redis.call('HGET', tokn, 'avg') or '') or used
      redis.call('HSET', tokn, 'avg', math.floor(avg * 0.8 + used * 0.2 + 0.5))
      if size > 0 then
        -- Tokens per input character (prompt and answer together), averaged the same way.
        local ratio = tonumber(redis.call('HGET', tokn, 'ratio') or '') or used / size
        redis.call('HSET', tokn, 'ratio', tostring(ratio * 0.8 + used / size * 0.2))
      end
    else
      -- Usage unknown (the call failed): its estimate stands, as settled.
      local raw = redis.call('HGET', tokn, id) or '0'
      if string.sub(raw, 1, 1) == '~' then redis.call('HSET', tokn, id, string.sub(raw, 2)) end
    end
  end
end
return 1
