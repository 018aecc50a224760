-- The provider answered 429: pause a key for every worker, never shortening a longer pause.
-- KEYS: pause string. ARGV: ms.
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
end
return 1
