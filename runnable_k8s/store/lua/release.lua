-- Release a lease only while we still hold it (compare-and-act in one step).
-- KEYS: lock. ARGV: owner.
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
