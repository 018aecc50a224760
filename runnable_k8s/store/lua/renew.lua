-- Renew a lease only while we still hold it (compare-and-act in one step).
-- KEYS: lock. ARGV: owner, lease ms.
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
